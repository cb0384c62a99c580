//! PNG charts of a benchmark's results, written next to its JSON report.
//!
//! A bench describes each chart as a [`Bars`] (groups along the x axis, one bar per series
//! in each group) built from its results; [`write`] renders it with plotters' bitmap
//! backend. Text is drawn by ab_glyph from a font file read at run time, so nothing about
//! fonts is needed to build (no fontconfig, no freetype): only DejaVu Sans at run time
//! (Debian's `fonts-dejavu-core`, which `cargo xtask bench` installs when missing).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};
use serde::Serialize;

/// Where the font is looked for, in order.
const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
/// The family name plotters' default text style asks for.
const FONT_FAMILY: &str = "sans-serif";
/// Chart size in pixels.
const WIDTH: u32 = 900;
const HEIGHT: u32 = 480;
/// Share of a group's slot its bars fill (the rest separates groups).
const GROUP_FILL: f64 = 0.8;
/// Headroom above the tallest bar, for the legend.
const HEADROOM: f64 = 1.3;
/// Series colours, in order (repeated past the end).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

/// A grouped bar chart.
#[derive(Clone, Debug, Serialize)]
pub struct Bars {
    /// The chart's title.
    pub title: String,
    /// What the x axis groups by (e.g. "rules").
    pub x_label: String,
    /// What the bars measure, with the unit.
    pub y_label: String,
    /// One label per group along the x axis.
    pub groups: Vec<String>,
    /// One bar per group each; `None` where the series has no value for a group.
    pub series: Vec<Series>,
    /// Horizontal lines drawn across the chart (targets, the baseline).
    pub lines: Vec<Line>,
}

/// One series of bars.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Its value in each group.
    pub values: Vec<Option<f64>>,
}

/// A figure of a bench's case to chart: its legend, and how to read it from the case.
// Every bench compiles this module on its own, and not every one charts by field.
#[allow(dead_code)]
pub type Field<C> = (&'static str, fn(&C) -> f64);

/// One series per field, each with its value in every case (one group per case).
#[allow(dead_code)]
pub fn series_of<C>(cases: &[C], fields: &[Field<C>]) -> Vec<Series> {
    fields
        .iter()
        .map(|(name, field)| Series {
            name: (*name).to_owned(),
            values: cases.iter().map(|c| Some(field(c))).collect(),
        })
        .collect()
}

/// A horizontal reference line.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Its legend.
    pub name: String,
    /// Where it is on the y axis.
    pub y: f64,
}

/// Makes the font known to plotters (once per process).
fn register() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let Some(bytes) = FONT_FILES.iter().find_map(|f| std::fs::read(f).ok()) else {
                return Err(format!(
                    "no font for the charts' text: none of {} exists (install Debian's \
                     fonts-dejavu-core)",
                    FONT_FILES.join(", ")
                ));
            };
            // plotters keeps the font for the rest of the process.
            let bytes: &'static [u8] = Vec::leak(bytes);
            register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a font plotters can read", FONT_FILES[0]))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Renders `chart` to `path` (PNG).
pub fn write(path: &Path, chart: &Bars) -> anyhow::Result<()> {
    register()?;
    if chart.groups.is_empty() || chart.series.is_empty() {
        bail!("chart {}: nothing to draw", chart.title);
    }
    let top = chart
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .chain(chart.lines.iter().map(|l| &l.y))
        .fold(0.0_f64, |m, v| m.max(*v))
        * HEADROOM;
    let top = if top > 0.0 { top } else { 1.0 };
    let groups = chart.groups.len();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut plot = ChartBuilder::on(&root)
        .caption(&chart.title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..groups as f64 - 0.5, 0.0..top)
        .map_err(draw)?;
    // Groups sit at the integers; every other x label stays empty.
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            chart.groups.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    plot.configure_mesh()
        .disable_x_mesh()
        .x_labels(groups)
        .x_label_formatter(&label)
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()
        .map_err(draw)?;
    let width = GROUP_FILL / chart.series.len() as f64;
    for (k, series) in chart.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let bars = series.values.iter().enumerate().filter_map(|(g, v)| {
            let left = g as f64 - GROUP_FILL / 2.0 + k as f64 * width;
            v.map(|v| Rectangle::new([(left, 0.0), (left + width, v)], colour.filled()))
        });
        plot.draw_series(bars)
            .map_err(draw)?
            .label(&series.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    for (k, line) in chart.lines.iter().enumerate() {
        let colour = if k == 0 {
            BLACK
        } else {
            RGBColor(0x80, 0x80, 0x80)
        };
        plot.draw_series(LineSeries::new(
            [(-0.5, line.y), (groups as f64 - 0.5, line.y)],
            colour.stroke_width(2),
        ))
        .map_err(draw)?
        .label(&line.name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], colour.stroke_width(2)));
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT_FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// Renders each chart to `target/bench/<bench>-<suffix>.png` and says where.
pub fn write_all(bench: &str, charts: &[(&str, Bars)]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = super::bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (suffix, chart) in charts {
        let path = dir.join(format!("{bench}-{suffix}.png"));
        write(&path, chart).with_context(|| format!("chart {}", path.display()))?;
        println!("chart: {}", path.display());
        written.push(path);
    }
    Ok(written)
}
