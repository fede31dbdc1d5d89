//! The plot in BENCHMARKS.md: throughput and p99 latency per target, logging on and off, as a hand-written SVG
//! (two bar panels), so the harness needs no plotting library.

use std::fmt::Write as _;

/// One bar group: a target and its values with logging on and off.
#[derive(Debug, Clone)]
pub struct Group {
    /// Target name.
    pub label: String,
    /// Value with logging on.
    pub on: Option<f64>,
    /// Value with logging off.
    pub off: Option<f64>,
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the bars.
    pub title: String,
    /// How values are printed above bars.
    pub unit: String,
    /// The groups.
    pub groups: Vec<Group>,
}

const WIDTH: f64 = 460.0;
const HEIGHT: f64 = 300.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const LEFT: f64 = 20.0;
const ON_COLOUR: &str = "#3b6ea8";
const OFF_COLOUR: &str = "#9cc3e6";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn format_value(value: f64) -> String {
    if value >= 1000.0 { format!("{:.1}k", value / 1000.0) } else if value >= 10.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

fn panel(svg: &mut String, panel: &Panel, x0: f64) {
    let max = panel.groups.iter().flat_map(|g| [g.on, g.off]).flatten().fold(0.0_f64, f64::max).max(f64::EPSILON);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - 2.0 * LEFT) / panel.groups.len().max(1) as f64;
    let bar = (slot * 0.35).min(40.0);
    let baseline = HEIGHT - BOTTOM;
    let _ = writeln!(svg, r#"<text x="{:.1}" y="22" font-size="15" text-anchor="middle" font-weight="bold">{}</text>"#, x0 + WIDTH / 2.0, escape(&panel.title));
    let _ = writeln!(svg, r##"<line x1="{:.1}" y1="{baseline:.1}" x2="{:.1}" y2="{baseline:.1}" stroke="#444"/>"##, x0 + LEFT, x0 + WIDTH - LEFT);
    for (index, group) in panel.groups.iter().enumerate() {
        let centre = x0 + LEFT + slot * (index as f64 + 0.5);
        for (offset, value, colour) in [(-bar, group.on, ON_COLOUR), (0.0, group.off, OFF_COLOUR)] {
            let Some(value) = value else { continue };
            let height = value / max * plot_height;
            let x = centre + offset;
            let y = baseline - height;
            let _ = writeln!(svg, r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{height:.1}" fill="{colour}"/>"#);
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                x + bar / 2.0,
                y - 3.0,
                escape(&format_value(value))
            );
        }
        let _ = writeln!(svg, r#"<text x="{centre:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#, baseline + 16.0, escape(&group.label));
    }
    let _ = writeln!(svg, r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##, x0 + WIDTH / 2.0, baseline + 34.0, escape(&panel.unit));
}

/// The whole figure: panels side by side and a legend.
pub fn render(panels: &[Panel], caption: &str) -> String {
    let width = WIDTH * panels.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" viewBox="0 0 {width:.0} {:.0}" font-family="sans-serif">"#,
        HEIGHT + 20.0,
        HEIGHT + 20.0
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (index, p) in panels.iter().enumerate() {
        panel(&mut svg, p, WIDTH * index as f64);
    }
    let legend_y = HEIGHT + 5.0;
    let _ = writeln!(svg, r#"<rect x="20" y="{:.1}" width="12" height="12" fill="{ON_COLOUR}"/>"#, legend_y - 10.0);
    let _ = writeln!(svg, r#"<text x="36" y="{legend_y:.1}" font-size="12">access log + metrics on</text>"#);
    let _ = writeln!(svg, r#"<rect x="200" y="{:.1}" width="12" height="12" fill="{OFF_COLOUR}"/>"#, legend_y - 10.0);
    let _ = writeln!(svg, r#"<text x="216" y="{legend_y:.1}" font-size="12">off</text>"#);
    let _ = writeln!(svg, r##"<text x="{:.1}" y="{legend_y:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##, width - 10.0, escape(caption));
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_labels_are_escaped() {
        let svg = render(
            &[Panel {
                title: "t<1>".to_owned(),
                unit: "req/s".to_owned(),
                groups: vec![
                    Group { label: "a".to_owned(), on: Some(100.0), off: Some(50.0) },
                    Group { label: "b".to_owned(), on: None, off: Some(25.0) },
                ],
            }],
            "caption",
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t&lt;1&gt;"));
        let plot_height = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("height=\"{plot_height:.1}\"")), "the largest bar fills the plot");
        assert!(svg.contains(&format!("height=\"{:.1}\"", plot_height / 4.0)));
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 2, "background, three bars, two legend swatches");
    }
}
