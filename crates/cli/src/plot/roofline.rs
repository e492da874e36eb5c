//! `deltanet bench --plot`: the kernel results on a roofline (GFLOP/s
//! against FLOP per byte, log-log, under the GEMM ceiling and the in-place
//! read-modify-write bandwidth measured in the same run), and beside it the
//! share of conv, gate, delta rule and the rest in each whole-layer step,
//! with the conv + gate targets.

use super::{draw_png, font, PlotError};
use crate::bench::{decode_bytes_per_token_head, decode_flop_per_token_head, extend_bytes_per_token_head, extend_flop_per_token_head};
use crate::bench::{LayerResult, LayerStep, Report};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Pixel size of the chart `deltanet bench --plot` writes.
pub const SIZE: (u32, u32) = (1600, 800);

/// One measured kernel on the roofline.
struct Point {
    label: String,
    intensity: f64,
    gflops: f64,
    color: RGBColor,
    /// Label on the left of the point.
    left: bool,
}

fn points(rep: &Report) -> Vec<Point> {
    let d = rep.dims;
    let (hv, k, v) = (d.num_v_heads as f64, d.head_k_dim, d.head_v_dim);
    let mut pts: Vec<Point> = rep
        .extend
        .iter()
        .map(|e| Point {
            label: format!("extend T={}", e.tokens),
            intensity: extend_flop_per_token_head(k, v) / extend_bytes_per_token_head(k, v),
            gflops: e.gflops,
            color: BLUE,
            left: false,
        })
        .collect();
    for x in &rep.decode {
        let flop = decode_flop_per_token_head(k, v);
        pts.push(Point {
            label: format!("decode b{} {}", x.batch, x.state),
            intensity: flop / decode_bytes_per_token_head(k, v, x.state),
            gflops: x.tokens_per_s * hv * flop / 1e9,
            color: if x.state == deltanet_core::DType::F32 { RED } else { GREEN },
            left: x.state == deltanet_core::DType::F32,
        });
    }
    pts
}

/// Writes the chart of `rep` to `path` ([`SIZE`] pixels, RGB PNG).
pub fn write(rep: &Report, path: &Path) -> Result<(), PlotError> {
    draw_png(path, SIZE, |root| {
        let d = rep.dims;
        let title = format!(
            "deltanet bench: CPU, {} threads, HK {} HV {} K {} V {} (ceilings measured in the same rounds)",
            rep.threads, d.num_k_heads, d.num_v_heads, d.head_k_dim, d.head_v_dim
        );
        let root = root.titled(&title, font(22))?;
        let (left, right) = root.split_horizontally(SIZE.0 * 11 / 20);
        roofline(rep, &left)?;
        layer_shares(&rep.layer, &right)
    })
}

fn roofline(rep: &Report, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError> {
    let pts = points(rep);
    let gemm = rep.gemm.gflops;
    // the decode groups each time the ceiling in their own rounds: the best of them is the roof
    let rmw = rep.decode.iter().map(|x| x.rmw_gbps).fold(0.0, f64::max);
    let finite = |x: f64| x.is_finite() && x > 0.0;
    let xs: Vec<f64> = pts.iter().map(|p| p.intensity).filter(|&x| finite(x)).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.gflops).chain([gemm]).filter(|&y| finite(y)).collect();
    let (x_lo, x_hi) = (xs.iter().copied().fold(1.0, f64::min) / 4.0, xs.iter().copied().fold(1.0, f64::max) * 4.0);
    let (y_lo, y_hi) = (ys.iter().copied().fold(1.0, f64::min) / 4.0, ys.iter().copied().fold(1.0, f64::max) * 3.0);
    let mut chart = ChartBuilder::on(area)
        .caption("kernels against their ceilings (roofline)", font(18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP per byte of state and activations)")
        .y_desc("GFLOP/s")
        .label_style(font(13))
        .axis_desc_style(font(15))
        .draw()?;
    if finite(gemm) {
        chart
            .draw_series(LineSeries::new([(x_lo, gemm), (x_hi, gemm)], BLACK.stroke_width(2)))?
            .label(format!("GEMM ceiling {:.0} GFLOP/s (n = {})", gemm, rep.gemm.n))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    if finite(rmw) {
        // bandwidth roof: GB/s x FLOP/B = GFLOP/s, up to where it meets the GEMM ceiling
        let knee = if finite(gemm) { (gemm / rmw).clamp(x_lo, x_hi) } else { x_hi };
        chart
            .draw_series(LineSeries::new([(x_lo, rmw * x_lo), (knee, rmw * knee)], MAGENTA.stroke_width(2)))?
            .label(format!("in-place read-modify-write {rmw:.1} GB/s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], MAGENTA.stroke_width(2)));
    }
    for p in pts.iter().filter(|p| finite(p.intensity) && finite(p.gflops)) {
        // f32 and bf16 decode points sit at two intensities, the batches one above
        // the other: f32 labels go left of their points, the others right
        let dx = if p.left { -10 - 7 * p.label.len() as i32 } else { 10 };
        chart.draw_series(std::iter::once(
            EmptyElement::at((p.intensity, p.gflops))
                + Circle::new((0, 0), 5, p.color.filled())
                + Text::new(p.label.clone(), (dx, -6), font(12)),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(font(13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Stacked horizontal bars: conv, gate, delta rule and the rest of each whole-layer step, in % of the step.
fn layer_shares(layer: &[LayerResult], area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError> {
    // n segments: a segmented 0..m range has m + 1
    let n = layer.len().max(1);
    let names: Vec<String> = layer.iter().map(|l| format!("{} {:.0} tok/s", l.step, l.tokens_per_s())).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("whole layer: share of each part (| = conv + gate target)", font(18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..100.0, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("% of the layer step's time")
        .label_style(font(12))
        .axis_desc_style(font(15))
        .draw()?;
    let parts: [(&str, RGBColor); 4] =
        [("conv", RED), ("gate", RGBColor(255, 165, 0)), ("delta rule", BLUE), ("rest", RGBColor(160, 160, 160))];
    for (j, &(name, color)) in parts.iter().enumerate() {
        let bars = layer.iter().enumerate().map(|(i, l)| {
            let share = |x: f64| (100.0 * x / l.secs).max(0.0);
            let rest = l.secs - l.conv_secs - l.gate_secs - l.delta_secs;
            let widths = [share(l.conv_secs), share(l.gate_secs), share(l.delta_secs), share(rest)];
            let start: f64 = widths[..j].iter().sum::<f64>().min(100.0);
            let end = (start + widths[j]).min(100.0);
            let mut bar = Rectangle::new([(start, SegmentValue::Exact(i)), (end, SegmentValue::Exact(i + 1))], color.filled());
            bar.set_margin(6, 6, 0, 0);
            bar
        });
        chart.draw_series(bars)?.label(name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    let targets = layer.iter().enumerate().filter_map(|(i, l)| {
        let t = match l.step {
            LayerStep::Extend { .. } | LayerStep::Mixed { .. } => 10.0,
            LayerStep::Decode { .. } => 15.0,
            LayerStep::Verify { .. } => return None,
        };
        Some(PathElement::new([(t, SegmentValue::Exact(i)), (t, SegmentValue::Exact(i + 1))], BLACK.stroke_width(3)))
    });
    chart.draw_series(targets)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(font(13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
