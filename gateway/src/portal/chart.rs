//! The token-usage chart: stacked bars per day, one colour per model, drawn on the server as
//! SVG so it needs no script. The same numbers are always shown as a table next to it.

use super::html::escape;
use std::fmt::Write;

/// Usage per day and model, the chart's and the table's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyUsage {
    /// Day labels, oldest first (e.g. `2026-11-20`).
    pub days: Vec<String>,
    /// Per model, its tokens on each day (same length and order as `days`), largest total
    /// first.
    pub models: Vec<(String, Vec<u64>)>,
}

impl DailyUsage {
    /// Total tokens on day `i`, all models.
    pub fn day_total(&self, i: usize) -> u64 {
        self.models
            .iter()
            .map(|(_, v)| v.get(i).copied().unwrap_or(0))
            .fold(0u64, u64::saturating_add)
    }

    /// Whether there is nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.models.iter().all(|(_, v)| v.iter().all(|&n| n == 0))
    }
}

/// Models drawn with their own colour; the rest are summed as `other`.
pub const MAX_MODELS: usize = 7;

/// Colours with at least 3:1 contrast against white (WCAG non-text contrast), distinct in
/// hue and lightness.
const COLOURS: [&str; MAX_MODELS + 1] = [
    "#0b57d0", "#b3261e", "#146c2e", "#8a4baf", "#a15c00", "#00696f", "#5c5c5c", "#7a2e4d",
];

const WIDTH: u32 = 560;
const PLOT_TOP: u32 = 16;
const PLOT_HEIGHT: u32 = 180;
const AXIS_LABELS: u32 = 24;
const LEFT: u32 = 56;
const LEGEND_ROW: u32 = 20;
const LEGEND_COLUMNS: u32 = 2;

/// The fill of the `i`-th model, in the chart and in the table's swatches.
pub fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

/// An HTML swatch of the `i`-th model's colour, for the table next to the chart (decorative:
/// the model's name is beside it).
pub fn swatch(i: usize) -> String {
    format!(
        "<svg width=\"12\" height=\"12\" aria-hidden=\"true\" focusable=\"false\">\
         <rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> ",
        colour(i)
    )
}

/// Keeps the `MAX_MODELS` largest models and sums the others into `other`.
pub fn fold_small_models(mut usage: DailyUsage) -> DailyUsage {
    usage
        .models
        .sort_by_key(|(name, v)| (std::cmp::Reverse(saturating_sum(v)), name.clone()));
    if usage.models.len() > MAX_MODELS {
        let rest = usage.models.split_off(MAX_MODELS - 1);
        let mut other = vec![0u64; usage.days.len()];
        for (_, v) in rest {
            for (o, n) in other.iter_mut().zip(v) {
                *o = o.saturating_add(n);
            }
        }
        usage.models.push(("other".into(), other));
    }
    usage
}

fn saturating_sum(v: &[u64]) -> u64 {
    v.iter().fold(0u64, |a, &n| a.saturating_add(n))
}

/// The chart as an SVG element. Bars are proportional to each day's total (the tallest day
/// fills the plot); every text is escaped; with no tokens at all it says "no usage yet".
pub fn usage_svg(usage: &DailyUsage) -> String {
    let title_id = "usage-chart-title";
    let desc_id = "usage-chart-desc";
    let legend_rows = usage.models.len().div_ceil(LEGEND_COLUMNS as usize) as u32;
    let height = PLOT_TOP + PLOT_HEIGHT + AXIS_LABELS + legend_rows * LEGEND_ROW + 8;
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" \
         role=\"img\" aria-labelledby=\"{title_id} {desc_id}\" font-family=\"system-ui, sans-serif\" font-size=\"14\">"
    );
    let _ = write!(
        out,
        "<title id=\"{title_id}\">LLM tokens per day by model</title>"
    );
    let _ = write!(
        out,
        "<desc id=\"{desc_id}\">{}</desc>",
        escape(&describe(usage))
    );
    let base = PLOT_TOP + PLOT_HEIGHT;
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{WIDTH}\" y2=\"{base}\" stroke=\"#1a1a1a\"/>"
    );
    if usage.is_empty() || usage.days.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#1a1a1a\">no usage yet</text></svg>",
            WIDTH / 2,
            PLOT_TOP + PLOT_HEIGHT / 2
        );
        return out;
    }
    let max = (0..usage.days.len())
        .map(|i| usage.day_total(i))
        .max()
        .unwrap_or(0)
        .max(1);
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#1a1a1a\">{}</text>\
         <text x=\"{}\" y=\"{base}\" text-anchor=\"end\" fill=\"#1a1a1a\">0</text>",
        LEFT - 6,
        PLOT_TOP + 4,
        short_number(max),
        LEFT - 6,
    );
    let slot = (WIDTH - LEFT) / usage.days.len() as u32;
    let bar_width = (slot * 3 / 5).max(1);
    for (i, day) in usage.days.iter().enumerate() {
        let x = LEFT + slot * i as u32 + (slot - bar_width) / 2;
        let mut y = base as f64;
        for (m, (model, values)) in usage.models.iter().enumerate() {
            let n = values.get(i).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            // Never above the plot, even when a saturated day total understates the sum.
            let h = (n as f64 / max as f64 * PLOT_HEIGHT as f64).min(y - PLOT_TOP as f64);
            y -= h;
            let _ = write!(
                out,
                "<rect x=\"{x}\" y=\"{y:.2}\" width=\"{bar_width}\" height=\"{h:.2}\" fill=\"{}\">\
                 <title>{}: {} tokens on {}</title></rect>",
                colour(m),
                escape(model),
                n,
                escape(day)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#1a1a1a\">{}</text>",
            x + bar_width / 2,
            base + 16,
            escape(day.get(5..).unwrap_or(day))
        );
    }
    let legend_top = base + AXIS_LABELS;
    let column = (WIDTH - LEFT) / LEGEND_COLUMNS;
    for (m, (model, _)) in usage.models.iter().enumerate() {
        let x = LEFT + column * (m as u32 % LEGEND_COLUMNS);
        let y = legend_top + LEGEND_ROW * (m as u32 / LEGEND_COLUMNS);
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"#1a1a1a\">{}</text>",
            colour(m),
            x + 18,
            y + 11,
            escape(&ellipsize(model, 28))
        );
    }
    out.push_str("</svg>");
    out
}

/// The chart's text alternative: the total per day.
fn describe(usage: &DailyUsage) -> String {
    if usage.is_empty() {
        return "no usage yet".into();
    }
    let days: Vec<String> = usage
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{d}: {}", usage.day_total(i)))
        .collect();
    format!(
        "Total tokens per day. {}. The table below has the numbers per model.",
        days.join(", ")
    )
}

/// `1234567` as `1.2M`, for the axis.
pub fn short_number(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(days: &[&str], models: &[(&str, &[u64])]) -> DailyUsage {
        DailyUsage {
            days: days.iter().map(|d| d.to_string()).collect(),
            models: models
                .iter()
                .map(|(m, v)| (m.to_string(), v.to_vec()))
                .collect(),
        }
    }

    /// (fill, height) of every bar.
    fn bars(svg: &str) -> Vec<(String, f64)> {
        svg.split("<rect ")
            .skip(1)
            .filter(|r| !r.contains("width=\"12\" height=\"12\""))
            .map(|r| {
                let attr = |name: &str| {
                    let start = r.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                    r[start..start + r[start..].find('"').unwrap()].to_string()
                };
                (attr("fill"), attr("height").parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn bars_are_proportional_and_the_tallest_day_fills_the_plot() {
        let u = usage(
            &["2026-11-20", "2026-11-21", "2026-11-22"],
            &[("a", &[100, 50, 0]), ("b", &[100, 0, 25])],
        );
        let b = bars(&usage_svg(&u));
        let heights: Vec<f64> = b.iter().map(|(_, h)| *h).collect();
        // Day 1: a=100, b=100 (the maximum, 200 tokens = the whole plot); day 2: a=50; day 3: b=25.
        assert_eq!(heights, vec![90.0, 90.0, 45.0, 22.5]);
        assert_eq!(b[0].0, COLOURS[0]);
        assert_eq!(b[1].0, COLOURS[1]);
        assert_eq!(b[3].0, COLOURS[1]);
        assert!(!usage_svg(&u).contains("no usage yet"));
    }

    #[test]
    fn stacked_bars_sit_on_each_other() {
        let u = usage(&["2026-11-20"], &[("a", &[30]), ("b", &[10])]);
        let svg = usage_svg(&u);
        let ys: Vec<f64> = svg
            .split("<rect ")
            .skip(1)
            .filter(|r| !r.contains("width=\"12\""))
            .map(|r| {
                let s = r.find("y=\"").unwrap() + 3;
                r[s..s + r[s..].find('"').unwrap()].parse().unwrap()
            })
            .collect();
        let base = (PLOT_TOP + PLOT_HEIGHT) as f64;
        assert_eq!(ys, vec![base - 135.0, base - 180.0]);
    }

    #[test]
    fn empty_data_says_no_usage_yet() {
        for u in [
            DailyUsage::default(),
            usage(&["2026-11-20", "2026-11-21"], &[]),
            usage(&["2026-11-20"], &[("a", &[0])]),
        ] {
            let svg = usage_svg(&u);
            assert!(svg.contains(">no usage yet</text>"), "{svg}");
            assert!(bars(&svg).is_empty());
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        }
    }

    #[test]
    fn model_names_and_days_are_escaped() {
        let u = usage(
            &["<day>"],
            &[("</title><script>alert(1)</script>\"'", &[5])],
        );
        let svg = usage_svg(&u);
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("<day>"));
        assert!(svg.contains("&lt;/title&gt;&lt;script&gt;"));
        // Every `<` opens one of the chart's own elements.
        for tag in svg.split('<').skip(1) {
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                ["svg", "title", "desc", "line", "text", "rect"].contains(&name.as_str()),
                "{name:?} in {svg}"
            );
        }
    }

    #[test]
    fn the_chart_has_a_title_and_a_text_alternative() {
        let u = usage(&["2026-11-20", "2026-11-21"], &[("m", &[3, 4])]);
        let svg = usage_svg(&u);
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("aria-labelledby=\"usage-chart-title usage-chart-desc\""));
        assert!(svg.contains("<title id=\"usage-chart-title\">"));
        assert!(svg.contains("2026-11-20: 3, 2026-11-21: 4"));
        assert!(svg.contains("<title>m: 4 tokens on 2026-11-21</title>"));
    }

    #[test]
    fn small_models_are_folded_into_other() {
        let models: Vec<(String, Vec<u64>)> = (0..10u64)
            .map(|i| (format!("m{i}"), vec![i + 1, 1]))
            .collect();
        let u = fold_small_models(DailyUsage {
            days: vec!["d1".into(), "d2".into()],
            models,
        });
        assert_eq!(u.models.len(), MAX_MODELS);
        assert_eq!(u.models[0].0, "m9");
        let other = &u.models[MAX_MODELS - 1];
        // m0..m3 remain: (1+2+3+4, 4).
        assert_eq!(other, &("other".to_string(), vec![10, 4]));
        let total: u64 = u.models.iter().flat_map(|(_, v)| v).sum();
        assert_eq!(total, (1..=10).sum::<u64>() + 10);
    }

    #[test]
    fn huge_numbers_stay_inside_the_plot() {
        let u = fold_small_models(usage(
            &["d1", "d2"],
            &[("a", &[u64::MAX, 1]), ("b", &[u64::MAX, 0])],
        ));
        let svg = usage_svg(&u);
        let heights: Vec<f64> = bars(&svg).iter().map(|(_, h)| *h).collect();
        assert!(
            heights.iter().sum::<f64>() <= PLOT_HEIGHT as f64 + 0.01,
            "{heights:?}"
        );
        assert!(svg.contains(&short_number(u64::MAX)));
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(short_number(999), "999");
        assert_eq!(short_number(12_345), "12.3k");
        assert_eq!(short_number(4_500_000), "4.5M");
        assert_eq!(short_number(u64::MAX), "18446744073.7G");
    }
}
