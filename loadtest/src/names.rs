//! The names lookups ask for: given ones (`--name`, `--names FILE`), or a built-in
//! Kubernetes mix — in-cluster services, external names, names that do not exist — of
//! `--population` names; each lookup draws one from a Zipf distribution (`--zipf`, the
//! exponent: 1 is a typical web-like reuse, 0 uniform), so caches see realistic reuse.

use rand::Rng;

/// The built-in mix's shapes, cycled: services of namespaces (answered by the cluster
/// domain), external names (answered after the walk), names that do not exist.
const SHAPES: [&str; 4] = ["svc", "external", "svc", "missing"];

/// `population` names of the built-in mix. Service names are the `n`th service of the
/// demo zones' namespaces when they exist there (`web`, `kubernetes.default`, ...); others
/// are generated and answered NXDOMAIN by a cluster DNS — which is what a pod meets too.
pub fn builtin(population: usize) -> Vec<String> {
    const SERVICES: [&str; 4] = [
        "web",
        "kubernetes.default",
        "kube-dns.kube-system",
        "api.team-a",
    ];
    const EXTERNAL: [&str; 4] = ["github.com", "example.org", "www.example.org", "alauda.cn"];
    (0..population.max(1))
        .map(|i| match SHAPES[i % SHAPES.len()] {
            "svc" => SERVICES[(i / 2) % SERVICES.len()].to_string(),
            "external" => EXTERNAL[(i / 4) % EXTERNAL.len()].to_string(),
            _ => format!("missing-{i}.example.org"),
        })
        .collect()
}

/// Draws indexes 0..n with P(k) ∝ 1/(k+1)^s (inverse CDF over a precomputed table).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let weights: Vec<f64> = (1..=n.max(1)).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_the_first_names_and_uniform_does_not() {
        let mut rng = rand::rng();
        let zipf = Zipf::new(100, 1.0);
        let mut hits = [0usize; 100];
        for _ in 0..100_000 {
            hits[zipf.sample(&mut rng)] += 1;
        }
        // P(0) = 1/H(100) ≈ 0.193; P(99) ≈ 0.0019.
        assert!((17_000..21_500).contains(&hits[0]), "{}", hits[0]);
        assert!(hits[99] < 400, "{}", hits[99]);
        let uniform = Zipf::new(4, 0.0);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[uniform.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_000..11_000).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_builtin_mix_has_services_external_and_missing_names() {
        let names = builtin(8);
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"web".to_string()));
        assert!(names.contains(&"github.com".to_string()));
        assert!(names.iter().any(|n| n.starts_with("missing-")));
    }
}
