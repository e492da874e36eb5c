//! `deltanet replay --plot`: the error ratio against the oracle per token and
//! per 64-token chunk along the file's sequences (laid end to end), with the
//! places where state is handed from one call to the next marked: the
//! file's `chunk_splits` (separate extend calls) and the sequence starts. A
//! broken hand-off between prefill chunks shows as a step in the error right
//! after a split marker; a wrong 64-chunk recurrence as a step at a chunk edge.

use super::{draw_png, font, PlotError};
use crate::replay::{ReplayFile, ReplayReport};
use plotters::prelude::*;
use std::path::Path;

/// Pixel size of the chart `deltanet replay --plot` writes.
pub const SIZE: (u32, u32) = (1400, 700);

/// Errors below this (an exact token included) are drawn at it: a log axis has no 0.
const FLOOR: f64 = 1e-12;

/// Writes the chart of `rep` (from [`crate::replay::report`] on `file`) to `path` ([`SIZE`] pixels, RGB PNG);
/// `tolerance` is drawn as the pass line.
pub fn write(file: &ReplayFile, rep: &ReplayReport, tolerance: f64, backend: &str, path: &Path) -> Result<(), PlotError> {
    let starts = &file.cu_seqlens;
    let total = file.tokens().max(1);
    let clamp = |e: f64| if e.is_finite() { e.max(FLOOR) } else { 1.0 };
    let all = rep.per_token.iter().flatten().chain(rep.per_chunk.iter().flatten()).copied().map(clamp);
    let y_hi = all.fold(tolerance.max(FLOOR), f64::max) * 10.0;
    let y_lo = rep.per_token.iter().flatten().copied().map(clamp).fold(y_hi, f64::min).min(tolerance.max(FLOOR)) / 10.0;
    draw_png(path, SIZE, |root| {
        let title = format!(
            "deltanet replay on {backend}: {} sequences, {} tokens; o {:.2e}, final state {:.2e} vs the f64 oracle",
            starts.len() - 1,
            file.tokens(),
            rep.o_ratio,
            rep.state_ratio
        );
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..total as f64, (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("token (sequences end to end)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("error ratio vs oracle")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .label_style(font(13))
            .axis_desc_style(font(15))
            .draw()?;
        let vline = |x: usize, color: RGBColor, w: u32| PathElement::new([(x as f64, y_lo), (x as f64, y_hi)], color.stroke_width(w));
        let seq_starts = starts[1..starts.len() - 1].iter().map(|&s| vline(s, RGBColor(120, 120, 120), 2));
        chart
            .draw_series(seq_starts)?
            .label("sequence start")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(120, 120, 120).stroke_width(2)));
        let splits = starts.windows(2).flat_map(|w| {
            let (a, len) = (w[0], w[1] - w[0]);
            file.chunk_splits.iter().filter(move |&&s| s > 0 && s < len).map(move |&s| vline(a + s, RED, 2))
        });
        chart
            .draw_series(splits)?
            .label("chunk split (state handed to the next extend call)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        let orange = RGBColor(230, 140, 0);
        let chunks = starts.windows(2).zip(&rep.per_chunk).flat_map(|(w, cs)| {
            let (a, b) = (w[0], w[1]);
            cs.iter().enumerate().map(move |(c, &e)| {
                let (lo, hi) = (a + 64 * c, (a + 64 * (c + 1)).min(b));
                PathElement::new([(lo as f64, clamp(e)), (hi as f64, clamp(e))], orange.stroke_width(3))
            })
        });
        chart
            .draw_series(chunks)?
            .label("per 64-token chunk")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], orange.stroke_width(3)));
        for (i, (w, errs)) in starts.windows(2).zip(&rep.per_token).enumerate() {
            let line = LineSeries::new(errs.iter().enumerate().map(|(t, &e)| ((w[0] + t) as f64 + 0.5, clamp(e))), BLUE.stroke_width(1));
            let s = chart.draw_series(line)?;
            if i == 0 {
                s.label("per token").legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
            }
        }
        chart
            .draw_series(LineSeries::new([(0.0, tolerance.max(FLOOR)), (total as f64, tolerance.max(FLOOR))], BLACK.stroke_width(2)))?
            .label(format!("tolerance {tolerance:.1e}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        if let Some((s, t)) = rep.first_jump {
            let x = (starts[s] + t) as f64 + 0.5;
            let e = clamp(rep.per_token[s][t]);
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, e))
                    + Circle::new((0, 0), 7, RED.stroke_width(2))
                    + Text::new(format!("error jumps: seq {s}, token {t}"), (10, -18), font(14)),
            ))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(font(13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}
