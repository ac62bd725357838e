//! Line charts as hand-written SVG: axes with ticks, series as polylines with markers and
//! optional min–max whiskers, dashed horizontal reference lines, and a legend. No plotting
//! dependency; the output is a small, diffable text file.
//!
//! Laws: rendering is a pure function of the chart (same chart, same bytes); every number
//! placed on the page is finite (non-finite points are skipped), and all text is escaped.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 64.0;
/// Ticks aimed at on a linear axis.
const LINEAR_TICKS: usize = 6;
const PALETTE: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// One line of a chart.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Vertical min–max bars: (x, low, high).
    pub whiskers: Vec<(f64, f64, f64)>,
    pub markers: bool,
    pub dashed: bool,
}

/// A horizontal reference line, e.g. a goal or a limit.
#[derive(Debug, Clone)]
pub struct Rule {
    pub y: f64,
    pub label: String,
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// A logarithmic x axis (base 10); needs positive x values.
    pub x_log: bool,
    /// Tick positions on the x axis; chosen automatically when empty.
    pub x_ticks: Vec<f64>,
    /// Lower and upper y bounds; derived from the data when `None`.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
    pub rules: Vec<Rule>,
}

/// Maps data coordinates to the page.
struct Frame {
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    x_log: bool,
}

impl Frame {
    fn x(&self, x: f64) -> f64 {
        let (lo, hi, v) = if self.x_log {
            (self.x_min.log10(), self.x_max.log10(), x.log10())
        } else {
            (self.x_min, self.x_max, x)
        };
        LEFT + (v - lo) / span(lo, hi) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, y: f64) -> f64 {
        HEIGHT - BOTTOM - (y - self.y_min) / span(self.y_min, self.y_max) * (HEIGHT - TOP - BOTTOM)
    }
}

fn span(lo: f64, hi: f64) -> f64 {
    if hi > lo { hi - lo } else { 1.0 }
}

/// The chart as an SVG document.
pub fn render(chart: &Chart) -> String {
    let frame = frame(chart);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(&chart.title)
    );
    axes(&mut out, chart, &frame);
    for rule in &chart.rules {
        draw_rule(&mut out, rule, &frame);
    }
    for (i, series) in chart.series.iter().enumerate() {
        draw_series(&mut out, series, PALETTE[i % PALETTE.len()], &frame);
    }
    legend(&mut out, &chart.series);
    out.push_str("</svg>\n");
    out
}

fn finite_points(chart: &Chart) -> impl Iterator<Item = (f64, f64)> + '_ {
    let whisker_ends = chart.series.iter().flat_map(|s| {
        s.whiskers
            .iter()
            .flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])
    });
    chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .chain(whisker_ends)
        .filter(move |(x, y)| x.is_finite() && y.is_finite() && (!chart.x_log || *x > 0.0))
}

fn frame(chart: &Chart) -> Frame {
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in finite_points(chart) {
        (x_min, x_max) = (x_min.min(x), x_max.max(x));
        (y_min, y_max) = (y_min.min(y), y_max.max(y));
    }
    for rule in chart.rules.iter().filter(|r| r.y.is_finite()) {
        (y_min, y_max) = (y_min.min(rule.y), y_max.max(rule.y));
    }
    for &t in chart.x_ticks.iter().filter(|t| t.is_finite()) {
        (x_min, x_max) = (x_min.min(t), x_max.max(t));
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (1.0, 10.0);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let (y_min, y_max) = chart
        .y_range
        .unwrap_or((y_min.min(0.0), nice_ceiling(y_max)));
    Frame {
        x_min,
        x_max,
        y_min,
        y_max,
        x_log: chart.x_log,
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (for v > 0).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * power)
}

/// Evenly spaced round ticks covering `lo..=hi`.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let step = nice_ceiling(span(lo, hi) / LINEAR_TICKS as f64);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn axes(out: &mut String, chart: &Chart, frame: &Frame) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let _ = writeln!(
        out,
        r##"<path d="M{x0} {y1} V{y0} H{x1}" fill="none" stroke="#333"/>"##
    );
    let x_ticks = if chart.x_ticks.is_empty() {
        linear_ticks(frame.x_min, frame.x_max)
    } else {
        chart.x_ticks.clone()
    };
    for t in x_ticks.into_iter().filter(|t| t.is_finite()) {
        let x = frame.x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            number(t)
        );
    }
    for t in linear_ticks(frame.y_min, frame.y_max) {
        let y = frame.y(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            number(t)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 26.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        escape(&chart.y_label)
    );
}

fn draw_rule(out: &mut String, rule: &Rule, frame: &Frame) {
    if !rule.y.is_finite() {
        return;
    }
    let y = frame.y(rule.y);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        y - 5.0,
        escape(&rule.label)
    );
}

fn draw_series(out: &mut String, series: &Series, color: &str, frame: &Frame) {
    let usable = |x: f64, y: f64| x.is_finite() && y.is_finite() && (!frame.x_log || x > 0.0);
    let points: Vec<(f64, f64)> = series
        .points
        .iter()
        .filter(|(x, y)| usable(*x, *y))
        .map(|&(x, y)| (frame.x(x), frame.y(y)))
        .collect();
    for &(x, lo, hi) in series
        .whiskers
        .iter()
        .filter(|w| usable(w.0, w.1) && usable(w.0, w.2))
    {
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}" stroke-width="1.5"/>"#,
            frame.x(x),
            frame.y(lo),
            frame.y(hi)
        );
    }
    if points.len() > 1 {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let dash = if series.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
    }
    if series.markers {
        for (x, y) in &points {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
            );
        }
    }
}

fn legend(out: &mut String, series: &[Series]) {
    for (i, s) in series.iter().enumerate() {
        let y = TOP + 6.0 + 18.0 * i as f64;
        let x = LEFT + 14.0;
        let color = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 22.0,
            x + 28.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}

/// A tick label: integers without decimals, others with up to three significant decimals.
fn number(v: f64) -> String {
    if v == v.round() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
        assert_eq!(nice_ceiling(6.0), 10.0);
        assert_eq!(nice_ceiling(65_507.0), 100_000.0);
    }

    #[test]
    fn non_finite_points_and_markup_never_reach_the_page() {
        let chart = Chart {
            title: "a <b> & \"c\"".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![
                    (1.0, 1.0),
                    (2.0, f64::NAN),
                    (3.0, f64::INFINITY),
                    (4.0, 2.0),
                ],
                markers: true,
                ..Series::default()
            }],
            ..Chart::default()
        };
        let svg = render(&chart);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(render(&chart), svg, "rendering is deterministic");
    }
}
