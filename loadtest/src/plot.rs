//! SVG chart of a capacity ramp.
//!
//! `capacity` raises the number of open connections step by step; this module draws the
//! per-step results so the knee is visible at a glance: on top, push-to-client latency
//! (p50, p99, p99.9) against open connections; below, server RSS and kernel TCP memory
//! per connection against open connections.
//!
//! Only plotters' SVG backend is used, and without its `ttf` feature: text is written as
//! SVG `<text>` elements naming a generic font family, so nothing here needs system fonts
//! or fontconfig; the viewer picks the font when it renders the file.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One point of a capacity ramp, for plotting.
pub struct StepPoint {
    pub connections: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub latency_p999_us: Option<u64>,
    pub server_rss_bytes_per_conn: Option<f64>,
    pub kernel_tcp_bytes_per_conn: Option<f64>,
}

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 900;

/// Latency spanning more than this ratio (two decades) goes on a log axis, so p50 does
/// not flatten against the floor when p99.9 explodes past the knee.
const LOG_RATIO: f64 = 100.0;

/// Floor for latencies on a log axis: a reported 0 µs cannot sit on it.
const MIN_LATENCY_MS: f64 = 0.001;

/// One line to draw: legend name, colour and its (connections, value) points.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Draws latency percentiles and memory per connection against connections into an SVG file.
pub fn write_svg(path: &Path, title: &str, steps: &[StepPoint]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("nothing to plot: the run has no steps".into());
    }
    let svg = render(title, steps).map_err(|e| format!("cannot draw the chart: {e}"))?;
    // Rendering into memory and writing once keeps drawing errors apart from I/O errors
    // and leaves no half-written file behind when drawing fails.
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Any plotters error, reduced to its message.
type DrawResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn render(title: &str, steps: &[StepPoint]) -> DrawResult<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let body = root
            .titled(title, ("sans-serif", 26).into_font())
            .map_err(err)?;
        let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 / 2);

        let max_conn = steps.iter().map(|s| s.connections).max().unwrap_or(0);
        // Start at 0 so the ramp's shape is not exaggerated; a 5% pad keeps the last
        // point off the frame.
        let x_range = 0.0..(max_conn.max(1) as f64 * 1.05);

        draw_latency(&top, x_range.clone(), steps)?;
        draw_memory(&bottom, x_range, steps)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn latency_series(steps: &[StepPoint]) -> Vec<Series> {
    let pick = |f: fn(&StepPoint) -> Option<u64>| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter_map(|s| f(s).map(|us| (s.connections as f64, us as f64 / 1000.0)))
            .collect()
    };
    vec![
        Series {
            name: "p50",
            color: RGBColor(0x1f, 0x77, 0xb4),
            points: pick(|s| s.latency_p50_us),
        },
        Series {
            name: "p99",
            color: RGBColor(0xff, 0x7f, 0x0e),
            points: pick(|s| s.latency_p99_us),
        },
        Series {
            name: "p99.9",
            color: RGBColor(0xd6, 0x27, 0x28),
            points: pick(|s| s.latency_p999_us),
        },
    ]
}

fn memory_series(steps: &[StepPoint]) -> Vec<Series> {
    let pick = |f: fn(&StepPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter_map(|s| f(s).map(|b| (s.connections as f64, b)))
            // NaN or infinity (e.g. a division by zero connections) cannot be placed.
            .filter(|(_, b)| b.is_finite())
            .collect()
    };
    vec![
        Series {
            name: "server RSS / conn",
            color: RGBColor(0x2c, 0xa0, 0x2c),
            points: pick(|s| s.server_rss_bytes_per_conn),
        },
        Series {
            name: "kernel TCP / conn",
            color: RGBColor(0x94, 0x67, 0xbd),
            points: pick(|s| s.kernel_tcp_bytes_per_conn),
        },
    ]
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x_range: Range<f64>,
    steps: &[StepPoint],
) -> DrawResult<()> {
    let caption = "Push-to-client latency";
    let mut series = latency_series(steps);
    series.retain(|s| !s.points.is_empty());
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    if series.is_empty() {
        return draw_empty(area, caption, "no latency samples in this run");
    }
    let lo = values().fold(f64::INFINITY, f64::min).max(MIN_LATENCY_MS);
    let hi = values().fold(0.0, f64::max).max(MIN_LATENCY_MS);
    if hi / lo > LOG_RATIO {
        for s in &mut series {
            for p in &mut s.points {
                p.1 = p.1.max(MIN_LATENCY_MS);
            }
        }
        // Pad by a factor, not an offset, so the margins look the same on a log axis.
        let y = lo / 1.5..hi * 1.5;
        let corner = legend_corner(&series, &x_range, &y, true);
        let desc = "latency (ms, log scale)";
        draw_chart(area, caption, desc, x_range, y.log_scale(), corner, &series)
    } else {
        let y = 0.0..hi * 1.1;
        let corner = legend_corner(&series, &x_range, &y, false);
        draw_chart(area, caption, "latency (ms)", x_range, y, corner, &series)
    }
}

fn draw_memory<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x_range: Range<f64>,
    steps: &[StepPoint],
) -> DrawResult<()> {
    let caption = "Memory per connection";
    let mut series = memory_series(steps);
    series.retain(|s| !s.points.is_empty());
    if series.is_empty() {
        return draw_empty(area, caption, "no memory samples in this run");
    }
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let hi = values().fold(0.0, f64::max);
    // RSS per connection is a difference against a baseline and can dip below zero
    // at small counts; keep such points on the chart rather than clip them.
    let lo = values().fold(0.0, f64::min);
    let (unit, div) = if hi.max(-lo) >= 2.0 * 1024.0 * 1024.0 {
        ("MiB", 1024.0 * 1024.0)
    } else if hi.max(-lo) >= 2.0 * 1024.0 {
        ("KiB", 1024.0)
    } else {
        ("bytes", 1.0)
    };
    for s in &mut series {
        for p in &mut s.points {
            p.1 /= div;
        }
    }
    let (lo, hi) = (lo / div, hi / div);
    // All-zero values still need an axis of non-zero height.
    let pad = if hi > lo { (hi - lo) * 0.1 } else { 1.0 };
    let y = (if lo < 0.0 { lo - pad } else { 0.0 })..(hi + pad);
    let corner = legend_corner(&series, &x_range, &y, false);
    let desc = format!("{unit} per connection");
    draw_chart(area, caption, &desc, x_range, y, corner, &series)
}

/// Draws one framed panel with axes, the given series as lines with markers, and a legend.
fn draw_chart<DB, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    x_range: Range<f64>,
    y_range: Y,
    legend: SeriesLabelPosition,
    series: &[Series],
) -> DrawResult<()>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("open connections")
        .y_desc(y_desc)
        .x_label_formatter(&|v| fmt_count(*v))
        .y_label_formatter(&|v| fmt_value(*v))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()
        .map_err(err)?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // Markers show where the measured steps are, which a line alone hides.
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Picks the corner of the plot that the lines cross least, so the legend hides no data.
///
/// Works in plot coordinates scaled to 0..1 (y up), sampling along each segment since
/// a line can pass through a corner with no measured point in it.
fn legend_corner(
    series: &[Series],
    x: &Range<f64>,
    y: &Range<f64>,
    log_y: bool,
) -> SeriesLabelPosition {
    let nx = |v: f64| (v - x.start) / (x.end - x.start);
    let ny = |v: f64| {
        if log_y {
            (v.ln() - y.start.ln()) / (y.end.ln() - y.start.ln())
        } else {
            (v - y.start) / (y.end - y.start)
        }
    };
    let mut samples = Vec::new();
    for s in series {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(a, b)| (nx(a), ny(b))).collect();
        samples.extend(pts.iter().copied());
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            for i in 1..16 {
                let t = f64::from(i) / 16.0;
                samples.push((x0 + (x1 - x0) * t, y0 + (y1 - y0) * t));
            }
        }
    }
    // The legend box is roughly 0.3 of the plot wide and tall; the first corner with
    // the fewest samples wins, in this order of preference.
    let (lo, hi) = (0.0..0.3, 0.7..1.0);
    let corners = [
        (SeriesLabelPosition::UpperLeft, &lo, &hi),
        (SeriesLabelPosition::UpperRight, &hi, &hi),
        (SeriesLabelPosition::LowerRight, &hi, &lo),
        (SeriesLabelPosition::LowerLeft, &lo, &lo),
    ];
    let mut best = (SeriesLabelPosition::UpperLeft, usize::MAX);
    for (pos, xr, yr) in corners {
        let n = samples
            .iter()
            .filter(|(a, b)| xr.contains(a) && yr.contains(b))
            .count();
        if n < best.1 {
            best = (pos, n);
        }
    }
    best.0
}

/// A panel with only its caption and a note, so a missing measurement is stated, not
/// shown as a blank space.
fn draw_empty<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    note: &str,
) -> DrawResult<()> {
    let (w, h) = area.dim_in_pixel();
    let centre = (w as i32 / 2, h as i32 / 2);
    let style =
        TextStyle::from(("sans-serif", 20).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(caption, (centre.0, 30), style.clone()))
        .map_err(err)?;
    area.draw(&Text::new(
        note,
        centre,
        style.color(&RGBColor(0x77, 0x77, 0x77)),
    ))
    .map_err(err)?;
    Ok(())
}

/// Connection counts as 500, 12k, 1.5M: short enough for tick labels.
fn fmt_count(v: f64) -> String {
    let a = v.abs();
    let (n, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    if (n - n.round()).abs() < 0.05 {
        format!("{n:.0}{suffix}")
    } else {
        format!("{n:.1}{suffix}")
    }
}

/// Axis values with as many decimals as their size needs and no trailing zeros, so
/// 0.005 ms, 1.2 ms and 1200 ms all read naturally.
fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        // Also catches -0.0, which would print as "-0".
        return "0".into();
    }
    let a = v.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // Log-axis ticks go down to 0.001 ms.
        4
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A unique file in the temp dir, removed on drop even when the test fails.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            TempFile(std::env::temp_dir().join(format!(
                "throng-plot-{tag}-{}-{nanos}.svg",
                std::process::id()
            )))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn step(
        conns: u64,
        lat: Option<(u64, u64, u64)>,
        rss: Option<f64>,
        tcp: Option<f64>,
    ) -> StepPoint {
        StepPoint {
            connections: conns,
            latency_p50_us: lat.map(|l| l.0),
            latency_p99_us: lat.map(|l| l.1),
            latency_p999_us: lat.map(|l| l.2),
            server_rss_bytes_per_conn: rss,
            kernel_tcp_bytes_per_conn: tcp,
        }
    }

    #[test]
    fn writes_svg_with_all_series() {
        let f = TempFile::new("all");
        let steps = vec![
            step(1_000, Some((300, 900, 1_500)), Some(9_000.0), Some(4_200.0)),
            step(
                10_000,
                Some((350, 1_100, 2_500)),
                Some(8_500.0),
                Some(4_300.0),
            ),
            step(50_000, Some((500, 4_000, 90_000)), Some(8_300.0), None),
            step(100_000, None, Some(8_200.0), Some(4_250.0)),
        ];
        write_svg(&f.0, "capacity & <ramp>", &steps).unwrap();
        let svg = std::fs::read_to_string(&f.0).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..svg.len().min(80)]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("<text"),
            "text must be SVG <text>, not glyph paths"
        );
        for name in [
            "p50",
            "p99",
            "p99.9",
            "server RSS / conn",
            "kernel TCP / conn",
            "open connections",
            "log scale",
            "KiB per connection",
            // The title is escaped, not dropped or left as broken markup.
            "capacity &amp; &lt;ramp&gt;",
        ] {
            assert!(svg.contains(name), "missing {name:?}");
        }
    }

    #[test]
    fn empty_steps_is_an_error() {
        let f = TempFile::new("empty");
        let e = write_svg(&f.0, "t", &[]).unwrap_err();
        assert!(e.contains("no steps"), "{e}");
        assert!(!f.0.exists());
    }

    #[test]
    fn no_latency_still_draws_memory() {
        let f = TempFile::new("nolat");
        let steps = vec![
            step(100, None, Some(-200.0), Some(1_000.0)),
            step(200, None, Some(1_900.0), Some(f64::NAN)),
            step(400, None, Some(1_800.0), Some(1_100.0)),
        ];
        write_svg(&f.0, "memory only", &steps).unwrap();
        let svg = std::fs::read_to_string(&f.0).unwrap();
        assert!(svg.contains("no latency samples"));
        assert!(svg.contains("server RSS / conn"));
        assert!(svg.contains("kernel TCP / conn"));
        assert!(svg.contains("bytes per connection"));
        assert!(!svg.contains(">p50<"));
    }

    #[test]
    fn single_point_and_narrow_latency_use_linear_axis() {
        let f = TempFile::new("one");
        let steps = vec![step(0, Some((0, 0, 0)), None, None)];
        write_svg(&f.0, "one", &steps).unwrap();
        let svg = std::fs::read_to_string(&f.0).unwrap();
        assert!(svg.contains("latency (ms)"));
        assert!(svg.contains("no memory samples"));
    }

    #[test]
    fn write_failure_names_the_path() {
        let dir = std::env::temp_dir().join(format!("throng-plot-missing-{}", std::process::id()));
        let path = dir.join("x.svg");
        let e = write_svg(&path, "t", &[step(1, Some((1, 2, 3)), None, None)]).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(fmt_count(500.0), "500");
        assert_eq!(fmt_count(12_000.0), "12k");
        assert_eq!(fmt_count(1_500_000.0), "1.5M");
        assert_eq!(fmt_value(0.001), "0.001");
        assert_eq!(fmt_value(2.5), "2.5");
        assert_eq!(fmt_value(12.0), "12");
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(250.0), "250");
    }
}
