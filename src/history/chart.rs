//! The lag report as a chart to paste into a ticket: the sync delay over
//! the range (x: `request_time`, UTC; y: delay with its unit), p95 (solid)
//! and p50 (dashed) per host, the threshold as a red dashed line, the
//! windows above it shaded, round ticks on both axes.
//!
//! [`svg`] writes plain SVG text (no script, no external reference), with
//! ids and classes a reader (or a test) can find: `x-axis`, `y-axis`,
//! `threshold`, `series` paths with `data-host` and `data-stat`, `above`
//! rectangles. [`png`] renders that SVG with resvg (text in the system's
//! fonts), no browser involved.

use std::fmt::Write as _;

use super::report::{Report, Settings};
use crate::time;

/// Picture size, pixels.
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 520.0;
/// Plot area.
const LEFT: f64 = 84.0;
const RIGHT: f64 = WIDTH - 200.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = HEIGHT - 64.0;

/// Host colours (colour-blind safe, Okabe-Ito), in host order.
const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"];

const FONT: &str = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

/// Round steps for the time axis, ms.
const TIME_STEPS: [i64; 14] = [
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

/// The unit the delay axis is labelled in: name and milliseconds.
fn delay_unit(max_ms: f64) -> (&'static str, f64) {
    if max_ms < 2_000.0 {
        ("ms", 1.0)
    } else if max_ms < 180_000.0 {
        ("s", 1_000.0)
    } else if max_ms < 10_800_000.0 {
        ("min", 60_000.0)
    } else {
        ("h", 3_600_000.0)
    }
}

/// A round step (1, 2 or 5 × 10^k) giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A number as a tick label: no needless decimals.
fn num(v: f64) -> String {
    let r = (v * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r}")
    }
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `2026-11-29 14:05`.
fn minute(ms: i64) -> String {
    let s = time::format_iso_seconds(ms);
    format!("{} {}", &s[..10], &s[11..16])
}

/// Maps values to pixels.
struct Scale {
    st: Settings,
    /// Top of the delay axis, ms.
    y_max: f64,
    /// Bottom of the delay axis, ms (below zero with clock skew).
    y_min: f64,
}

impl Scale {
    fn x(&self, ms: i64) -> f64 {
        let span = (self.st.to_ms - self.st.from_ms).max(1) as f64;
        LEFT + (ms - self.st.from_ms) as f64 / span * (RIGHT - LEFT)
    }

    fn y(&self, ms: f64) -> f64 {
        BOTTOM - (ms - self.y_min) / (self.y_max - self.y_min) * (BOTTOM - TOP)
    }
}

/// The chart of a report as SVG text.
pub fn svg(r: &Report) -> String {
    let st = r.settings;
    let highest = r.hosts.iter().flat_map(|h| h.windows.iter().map(|w| w.2.p95)).max().unwrap_or(0).max(st.threshold_ms) as f64;
    let lowest = r.hosts.iter().flat_map(|h| h.windows.iter().map(|w| w.2.p50)).min().unwrap_or(0).min(0) as f64;
    let (unit, unit_ms) = delay_unit(highest);
    let step = nice_step((highest * 1.08 - lowest) / unit_ms, 6.0) * unit_ms;
    let y_max = ((highest * 1.08) / step).ceil().max(1.0) * step;
    let y_min = (lowest / step).floor() * step;
    let sc = Scale { st, y_max, y_min };
    let mut o = String::with_capacity(64 << 10);
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text id="title" x="{LEFT}" y="24" font-size="16" font-weight="bold">Sync delay by request time, {} to {} UTC</text>
<text x="{LEFT}" y="42" fill="#555555">p95 (solid) and p50 (dashed) per host, windows of {}; shaded: {} above the threshold</text>
"##,
        minute(st.from_ms),
        minute(st.to_ms),
        span(st.every_ms),
        st.statistic.name(),
    );

    // Windows above the threshold (any host), adjacent ones joined.
    let mut spans: Vec<(i64, i64)> = r.windows.iter().filter(|w| w.above).map(|w| (w.start_ms, w.end_ms)).collect();
    spans.sort_unstable();
    let mut joined: Vec<(i64, i64)> = Vec::new();
    for (a, b) in spans {
        match joined.last_mut() {
            Some(l) if a <= l.1 => l.1 = l.1.max(b),
            _ => joined.push((a, b)),
        }
    }
    o.push_str("<g id=\"above\">\n");
    for (a, b) in &joined {
        let (x0, x1) = (sc.x(*a), sc.x(*b));
        let _ = writeln!(
            o,
            r##"<rect class="above" data-start="{}" data-end="{}" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.13"/>"##,
            time::format_iso_seconds(*a),
            time::format_iso_seconds(*b),
            (x1 - x0).max(1.0),
            BOTTOM - TOP
        );
    }
    o.push_str("</g>\n");

    // Delay axis: grid lines and labels.
    o.push_str("<g id=\"y-axis\">\n");
    let mut v = y_min;
    while v <= y_max + step / 2.0 {
        let y = sc.y(v);
        let _ = writeln!(
            o,
            r##"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e3e3e3"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 8.0,
            y + 4.0,
            num(v / unit_ms)
        );
        v += step;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" stroke="#333333"/><text id="y-label" transform="translate(24,{:.1}) rotate(-90)" text-anchor="middle">sync delay ({unit})</text>"##,
        (TOP + BOTTOM) / 2.0
    );
    o.push_str("</g>\n");

    // Time axis: round steps, labels in UTC.
    let range = st.to_ms - st.from_ms;
    let tstep = TIME_STEPS.iter().copied().find(|s| range / s <= 12).unwrap_or(604_800_000);
    o.push_str("<g id=\"x-axis\">\n");
    let mut t = st.from_ms.div_euclid(tstep) * tstep;
    if t < st.from_ms {
        t += tstep;
    }
    let days = range > 86_400_000 || time::format_iso_seconds(st.from_ms)[..10] != time::format_iso_seconds(st.to_ms - 1)[..10];
    while t <= st.to_ms {
        let x = sc.x(t);
        let iso = time::format_iso_seconds(t);
        let label = if days && (tstep >= 86_400_000 || iso[11..16] == *"00:00") {
            format!("{} {}", &iso[5..10], &iso[11..16])
        } else {
            iso[11..16].to_string()
        };
        let _ = writeln!(
            o,
            r##"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#efefef"/><line x1="{x:.1}" y1="{BOTTOM}" x2="{x:.1}" y2="{:.1}" stroke="#333333"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            BOTTOM + 5.0,
            BOTTOM + 19.0
        );
        t += tstep;
    }
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#333333"/><text id="x-label" x="{:.1}" y="{:.1}" text-anchor="middle">request time (UTC, {})</text>"##,
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 18.0,
        if days {
            format!("{} to {}", &minute(st.from_ms)[..10], &minute(st.to_ms - 1)[..10])
        } else {
            minute(st.from_ms)[..10].to_string()
        }
    );
    o.push_str("</g>\n");

    // Series: a path per host and statistic, broken where a window has no
    // record; points at each window's middle.
    for (i, h) in r.hosts.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        for (stat, dash, width) in [("p95", "", 2.2), ("p50", " stroke-dasharray=\"6 4\"", 1.4)] {
            let mut d = String::new();
            let mut prev_end: Option<i64> = None;
            for (start, end, p) in &h.windows {
                let value = if stat == "p95" { p.p95 } else { p.p50 };
                let (x, y) = (sc.x((start + end) / 2), sc.y(value as f64));
                let cmd = if prev_end == Some(*start) { 'L' } else { 'M' };
                let _ = write!(d, "{cmd}{x:.1},{y:.1} ");
                if cmd == 'M' {
                    // A lone window still shows: a dot-sized segment.
                    let _ = write!(d, "L{:.1},{y:.1} ", x + 0.1);
                }
                prev_end = Some(*end);
            }
            let _ = writeln!(
                o,
                r##"<path class="series" data-host="{}" data-stat="{stat}" d="{}" fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round" stroke-linecap="round"{dash}/>"##,
                esc(&h.host),
                d.trim_end()
            );
        }
    }

    // The threshold.
    let ty = sc.y(st.threshold_ms as f64);
    let _ = writeln!(
        o,
        r##"<g id="threshold-line"><line id="threshold" data-ms="{}" x1="{LEFT}" y1="{ty:.1}" x2="{RIGHT}" y2="{ty:.1}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="8 4"/><text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end">threshold {} ({})</text></g>"##,
        st.threshold_ms,
        RIGHT - 4.0,
        ty - 6.0,
        span(st.threshold_ms),
        st.statistic.name()
    );

    // Legend.
    o.push_str("<g id=\"legend\">\n");
    let lx = RIGHT + 18.0;
    let mut ly = TOP + 8.0;
    for (i, h) in r.hosts.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let _ = writeln!(o, r##"<text x="{lx:.1}" y="{ly:.1}" font-weight="bold">{}</text>"##, esc(&clip(&h.host, 22)));
        for (stat, dash) in [("p95", ""), ("p50", " stroke-dasharray=\"6 4\"")] {
            ly += 17.0;
            legend_line(&mut o, lx, ly, &format!("stroke=\"{colour}\" stroke-width=\"2\"{dash}"), stat);
        }
        ly += 24.0;
    }
    legend_line(&mut o, lx, ly, "stroke=\"#d62728\" stroke-width=\"1.5\" stroke-dasharray=\"8 4\"", "threshold");
    ly += 20.0;
    let _ = writeln!(
        o,
        r##"<rect x="{lx:.1}" y="{:.1}" width="28" height="12" fill="#d62728" fill-opacity="0.13"/><text x="{:.1}" y="{ly:.1}">above it</text>"##,
        ly - 10.0,
        lx + 36.0
    );
    if r.hosts.is_empty() {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">no record with a delay in this range</text>"##,
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
    }
    o.push_str("</g>\n</svg>\n");
    o
}

/// A duration as a round label: `90 s`, `5 min`, `1 h`, `250 ms`.
/// One legend entry: a line sample drawn with the attributes `style`,
/// then its label.
fn legend_line(o: &mut String, lx: f64, ly: f64, style: &str, label: &str) {
    let _ = writeln!(
        o,
        r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" {style}/><text x="{:.1}" y="{ly:.1}">{label}</text>"##,
        ly - 4.0,
        lx + 28.0,
        ly - 4.0,
        lx + 36.0
    );
}

fn span(ms: i64) -> String {
    for (unit, size) in [("h", 3_600_000), ("min", 60_000), ("s", 1_000)] {
        if ms != 0 && ms % size == 0 {
            return format!("{} {unit}", ms / size);
        }
    }
    format!("{ms} ms")
}

/// At most `n` characters (a host name in the legend).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

/// Renders the chart's SVG as PNG (text in the system's fonts).
pub fn png(svg: &str) -> anyhow::Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt)?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or_else(|| anyhow::anyhow!("the chart has no size"))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    Ok(pixmap.encode_png()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_steps_and_units() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(660.0, 6.0), 200.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
        assert_eq!(delay_unit(1_500.0), ("ms", 1.0));
        assert_eq!(delay_unit(60_000.0), ("s", 1_000.0));
        assert_eq!(delay_unit(660_000.0), ("min", 60_000.0));
        assert_eq!(num(0.2 + 0.1), "0.3");
        assert_eq!(num(12.0), "12");
        assert_eq!(
            (span(60_000), span(300_000), span(7_200_000), span(1_500), span(90_000)),
            ("1 min".into(), "5 min".into(), "2 h".into(), "1500 ms".into(), "90 s".into())
        );
        assert_eq!(esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
