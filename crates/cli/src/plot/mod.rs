//! PNG charts: `deltanet bench --plot` (the bench results against their
//! ceilings, [`roofline`]) and `deltanet replay --plot` (the error ratio per
//! token and per chunk, with the boundaries where a broken state hand-off
//! shows up, [`replay_errors`]).
//!
//! Drawn with plotters into an RGB buffer and written with the `png` crate.
//! Text goes through plotters' `ab_glyph` renderer with DejaVu Sans embedded
//! by the `dejavu` crate, so a machine without fontconfig or font files (a
//! fresh CI container) draws the same labels.

pub mod replay_errors;
#[cfg(feature = "cpu")]
pub mod roofline;

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// Font family every chart's text uses (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";

/// Why a chart could not be drawn or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotError(String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for PlotError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        PlotError(e.to_string())
    }
}

/// Registers the embedded font once per process (plotters keeps a global font table).
fn register_font() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), PlotError>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| PlotError("the embedded DejaVu Sans font does not parse".into()))
    })
    .clone()
}

/// Draws with `draw` on a white `width x height` canvas and writes it to `path` as an 8-bit RGB PNG.
fn draw_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let io = |e: std::io::Error| PlotError(format!("writing {}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let enc_err = |e: png::EncodingError| PlotError(format!("encoding {}: {e}", path.display()));
    let mut w = enc.write_header().map_err(enc_err)?;
    w.write_image_data(&rgb).map_err(enc_err)?;
    w.finish().map_err(enc_err)
}

/// The embedded font at `size` pixels.
fn font(size: u32) -> FontDesc<'static> {
    (FONT, size).into_font()
}
