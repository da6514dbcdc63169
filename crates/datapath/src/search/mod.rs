//! The search-path model: is a query a search-list expansion, of which base name, with which
//! suffix at which position — or the absolute name?
//!
//! Two models:
//! - **Fixed list** (sidecar): the pod's own search list, from `search:` in config or the
//!   `search` line of `search.resolv_conf` (parsed with the `resolv-conf` crate).
//! - **Kubernetes convention** (node-local: many namespaces behind one proxy):
//!   `<ns>.svc.<cluster_domain>`, `svc.<cluster_domain>`, `<cluster_domain>`, then the host
//!   search domains from `search:`; the namespace is read off the name itself, so
//!   `x.example.com.team-a.svc.cluster.local` is base `x.example.com` + suffix
//!   `team-a.svc.cluster.local` (index 0) without knowing the namespace in advance.
//!
//! A name alone is ambiguous (`kubernetes.default.svc.cluster.local` is both `kubernetes` +
//! first suffix and an absolute name), so [`SearchModel::candidates`] lists every reading,
//! most specific first, ending with the absolute one; the lookup tracker picks the reading
//! that joins a lookup already open for that client.
//!
//! Config: `search: {list, ndots, cluster_domain, resolv_conf}` — the pod's list or the host
//! domains [from `resolv_conf` in a sidecar; none node-local], `ndots` [from `resolv_conf` in
//! a sidecar, else 5], `cluster_domain` [cluster.local], `resolv_conf` [/etc/resolv.conf].
//! The top-level `search` (a list), `ndots`, `cluster_domain` and `resolv_conf` still load,
//! with a deprecation warning. No metrics.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `search:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// The pod's list (sidecar) or host domains after the Kubernetes ones (node-local).
    /// Empty in a sidecar: read from `resolv_conf`.
    pub list: Vec<String>,
    /// The pod's ndots; from `resolv_conf` when unset in a sidecar, else 5.
    pub ndots: Option<u32>,
    pub cluster_domain: String,
    /// The pod's resolv.conf: search list and ndots (sidecar), upstreams when none is given.
    pub resolv_conf: PathBuf,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            list: Vec::new(),
            ndots: None,
            cluster_domain: "cluster.local".to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

impl SearchConfig {
    /// Checks the `search:` section on its own.
    pub fn validate(&self) -> Result<(), dnslens_yaml::invalid::Invalid> {
        use dnslens_yaml::invalid::check;
        check(
            self.ndots.is_some_and(|n| n > 15),
            "search.ndots",
            "at most 15 (the resolver's own limit)",
        )?;
        check(
            self.cluster_domain.trim_end_matches('.').is_empty(),
            "search.cluster_domain",
            "must not be empty",
        )?;
        match self
            .list
            .iter()
            .find(|d| d.trim_end_matches('.').is_empty() || d.contains(char::is_whitespace))
        {
            Some(bad) => check(true, "search.list", format!("'{bad}' is not a domain")),
            None => Ok(()),
        }
    }
}

/// Where dnslens runs: beside one pod, or on a node in front of many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Sidecar,
    NodeLocal,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sidecar => "sidecar",
            Mode::NodeLocal => "node-local",
        }
    }
}

/// One reading of a query name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The name the client's application asked for (no trailing dot, lower case).
    pub base: &'a str,
    /// The appended suffix and its position in the search list; `None` for the absolute name.
    pub suffix: Option<(usize, &'a str)>,
}

/// How search-list expansions are recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchModel {
    /// A pod's own list, in order (no trailing dots, lower case).
    Fixed { suffixes: Vec<String>, ndots: u32 },
    /// The Kubernetes convention plus host search domains.
    Kubernetes {
        cluster_domain: String,
        host_suffixes: Vec<String>,
        ndots: u32,
    },
}

fn normalise(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl SearchModel {
    /// Builds the model: node-local uses the Kubernetes convention; a sidecar uses
    /// `search:` or, when that is empty, the search list of `resolv_conf`.
    pub fn build(mode: Mode, settings: &SearchConfig) -> SearchModel {
        let configured: Vec<String> = settings.list.iter().map(|d| normalise(d)).collect();
        let resolv_conf = settings.resolv_conf.as_path();
        match mode {
            Mode::NodeLocal => SearchModel::Kubernetes {
                cluster_domain: normalise(&settings.cluster_domain),
                host_suffixes: configured,
                ndots: settings.ndots.unwrap_or(5),
            },
            Mode::Sidecar if !configured.is_empty() => SearchModel::Fixed {
                suffixes: configured,
                ndots: settings.ndots.unwrap_or(5),
            },
            Mode::Sidecar => {
                // Without a readable resolv.conf every query reads as an absolute name:
                // lookups still correlate (A with AAAA, retries), only the walk is not seen.
                let (suffixes, ndots) = read_resolv_conf(resolv_conf).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "no search list: set `search:` or --resolv-conf");
                    (Vec::new(), 5)
                });
                SearchModel::Fixed {
                    suffixes,
                    ndots: settings.ndots.unwrap_or(ndots),
                }
            }
        }
    }

    /// Every reading of `qname` (lower case, no trailing dot), most specific first; the last
    /// is always the absolute name.
    pub fn candidates<'a>(&self, qname: &'a str) -> Vec<Candidate<'a>> {
        self.candidates_for(qname, None)
    }

    /// As [`SearchModel::candidates`], for a client whose namespace is known (node-local
    /// pod identity): under the Kubernetes convention its first suffix is exactly
    /// `<namespace>.svc.<cluster_domain>`, so `x.other.svc.cluster.local` is `x.other` under
    /// the second suffix, never `x` under the first.
    pub fn candidates_for<'a>(
        &self,
        qname: &'a str,
        client_namespace: Option<&str>,
    ) -> Vec<Candidate<'a>> {
        let mut out = Vec::with_capacity(4);
        match self {
            SearchModel::Fixed { suffixes, .. } => {
                for (index, suffix) in suffixes.iter().enumerate() {
                    if let Some(base) = strip_suffix(qname, suffix) {
                        out.push(Candidate {
                            base,
                            suffix: Some((index, &qname[base.len() + 1..])),
                        });
                    }
                }
                // Longest suffix first: the most specific reading.
                out.sort_by_key(|c| c.base.len());
            }
            SearchModel::Kubernetes {
                cluster_domain,
                host_suffixes,
                ..
            } => {
                let svc = format!("svc.{cluster_domain}");
                if let Some(before_svc) = strip_suffix(qname, &svc) {
                    // <base>.<ns>.svc.<cd>: the namespace is the last label before "svc".
                    if let Some((base, ns)) = before_svc.rsplit_once('.') {
                        if !base.is_empty() && client_namespace.is_none_or(|own| own == ns) {
                            out.push(Candidate {
                                base,
                                suffix: Some((0, &qname[base.len() + 1..])),
                            });
                        }
                    }
                    out.push(Candidate {
                        base: before_svc,
                        suffix: Some((1, &qname[before_svc.len() + 1..])),
                    });
                }
                if let Some(base) = strip_suffix(qname, cluster_domain) {
                    out.push(Candidate {
                        base,
                        suffix: Some((2, &qname[base.len() + 1..])),
                    });
                }
                for (i, suffix) in host_suffixes.iter().enumerate() {
                    if let Some(base) = strip_suffix(qname, suffix) {
                        out.push(Candidate {
                            base,
                            suffix: Some((3 + i, &qname[base.len() + 1..])),
                        });
                    }
                }
            }
        }
        out.push(Candidate {
            base: qname,
            suffix: None,
        });
        out
    }
}

/// `qname` minus `.suffix`, if it ends so with a non-empty rest.
fn strip_suffix<'a>(qname: &'a str, suffix: &str) -> Option<&'a str> {
    let base = qname.strip_suffix(suffix)?.strip_suffix('.')?;
    (!base.is_empty()).then_some(base)
}

/// A resolv.conf that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ResolvConfError {
    path: PathBuf,
    message: String,
}

/// The search list and ndots of a resolv.conf file.
pub fn read_resolv_conf(path: &Path) -> Result<(Vec<String>, u32), ResolvConfError> {
    let error = |message: String| ResolvConfError {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let parsed = resolv_conf::Config::parse(&text).map_err(|e| error(e.to_string()))?;
    let suffixes = parsed
        .get_search()
        .map(|list| list.iter().map(|d| normalise(d)).collect())
        .unwrap_or_default();
    Ok((suffixes, parsed.ndots))
}

#[cfg(test)]
mod tests;
