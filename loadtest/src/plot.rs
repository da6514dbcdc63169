//! `dnslens-load plot RESULTS.json`: the pictures of a comparison (the JSON written by
//! `loadtest/compare.py`), each as SVG and PNG — the lookup-latency CDF of every target per
//! resolver model, CPU time per query and peak RSS per target.
//!
//! Text needs a TrueType font: plotters is built without its font-kit backend (which would
//! need fontconfig's C library), and is given DejaVu Sans (Debian `fonts-dejavu-core`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use plotters::prelude::*;
use serde::Deserialize;

use crate::report::Report;

/// The results file of `loadtest/compare.py`.
#[derive(Deserialize)]
pub struct Results {
    pub date: String,
    pub machine: String,
    pub targets: Vec<Target>,
}

#[derive(Deserialize)]
pub struct Target {
    pub name: String,
    pub cpu_us_per_query: Option<f64>,
    pub peak_rss_kib: Option<f64>,
    /// `dnslens-load` reports by model name.
    #[serde(default)]
    pub lookups: std::collections::BTreeMap<String, Report>,
}

const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Draws one picture as `base.svg` and `base.png`: `$draw` runs once on each backend's
/// drawing area, bound to `$area`.
macro_rules! both {
    ($base:expr, $area:ident => $draw:expr) => {{
        let base: &Path = $base;
        let (svg, png) = (base.with_extension("svg"), base.with_extension("png"));
        {
            let $area = SVGBackend::new(&svg, (960, 540)).into_drawing_area();
            $area.fill(&WHITE)?;
            $draw?;
            $area.present()?;
        }
        {
            let $area = BitMapBackend::new(&png, (960, 540)).into_drawing_area();
            $area.fill(&WHITE)?;
            $draw?;
            $area.present()?;
        }
        Ok::<_, anyhow::Error>(vec![svg, png])
    }};
}

pub fn plot(results: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(results).with_context(|| format!("{}", results.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("{}", results.display()))?;
    register_font()?;
    let out: PathBuf = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out)?;
    let subtitle = format!("{} — {}", results.date, results.machine);
    let mut written = Vec::new();
    let models: std::collections::BTreeSet<&String> = results
        .targets
        .iter()
        .flat_map(|t| t.lookups.keys())
        .collect();
    for model in models {
        let series: Vec<(&str, &Report)> = results
            .targets
            .iter()
            .filter_map(|t| t.lookups.get(model).map(|r| (t.name.as_str(), r)))
            .collect();
        let base = out.join(format!("lookup-latency-{model}"));
        let caption = format!("Lookup latency, {model} model ({subtitle})");
        written.extend(both!(&base, area => cdf(&area, &caption, &series))?);
    }
    let bars = |values: Vec<(&str, f64)>, what: &str, unit: &str, file: &str| {
        let caption = format!("{what} ({subtitle})");
        both!(&out.join(file), area => bar_chart(&area, &caption, unit, &values))
    };
    let cpu: Vec<(&str, f64)> = results
        .targets
        .iter()
        .filter_map(|t| t.cpu_us_per_query.map(|v| (t.name.as_str(), v)))
        .collect();
    written.extend(bars(cpu, "Server CPU per query", "µs", "cpu-per-query")?);
    let rss: Vec<(&str, f64)> = results
        .targets
        .iter()
        .filter_map(|t| t.peak_rss_kib.map(|v| (t.name.as_str(), v / 1024.0)))
        .collect();
    written.extend(bars(rss, "Peak RSS", "MiB", "peak-rss")?);
    for file in written {
        println!("{}", file.display());
    }
    Ok(())
}

fn register_font() -> anyhow::Result<()> {
    let Some(bytes) = FONTS.iter().find_map(|f| std::fs::read(f).ok()) else {
        bail!(
            "no TrueType font found ({}): apt-get install fonts-dejavu-core",
            FONTS.join(", ")
        );
    };
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    Ok(())
}

/// Percentile against latency (log scale), a line per target.
fn cdf<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    series: &[(&str, &Report)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let max = series
        .iter()
        .flat_map(|(_, r)| r.lookup_latency_cdf_us.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(1)
        .max(10);
    let min = series
        .iter()
        .flat_map(|(_, r)| r.lookup_latency_cdf_us.iter().map(|(_, v)| *v))
        .min()
        .unwrap_or(1)
        .max(2);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min / 2..max * 2).log_scale(), 0f64..100f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("lookup latency (µs, from its scheduled start)")
        .y_desc("percentile")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, report)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(u64, f64)> = report
            .lookup_latency_cdf_us
            .iter()
            .map(|(p, v)| ((*v).max(1), *p))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!(
                "{name}: p50 {} µs, p99 {} µs",
                report.lookup_latency_us.p50, report.lookup_latency_us.p99
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// A bar per target.
fn bar_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    values: &[(&str, f64)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let top = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d((0..values.len()).into_segmented(), 0f64..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_labels(values.len().max(1))
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => values
                .get(*i)
                .map(|(name, _)| name.to_string())
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(Palette99::pick(4).filled())
                .margin(20)
                .data(values.iter().enumerate().map(|(i, (_, v))| (i, *v))),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.2}"),
                (SegmentValue::CenterOf(i), *v),
                ("sans-serif", 14).into_font(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
