//! PNG figures: training curves, landmark overlays, bar charts, learned filters, cumulative
//! error distributions (CED) and heatmaps.
//!
//! Every figure is drawn into an in-memory RGB buffer (plotters' `BitMapBackend::with_buffer`
//! or plain `image`/`imageproc` drawing) and then saved atomically by [`save_png`]: the PNG is
//! encoded to a temporary file next to `path` and renamed over it, so an interrupted run never
//! leaves a half-written figure. Text uses DejaVu Sans from the `dejavu` crate, registered once
//! with plotters, so no system fonts are needed.
//!
//! Landmarks use the crate-wide continuous pixel convention: pixel `i` covers `[i, i + 1)`.

use std::path::{Path, PathBuf};
use std::sync::Once;

use image::{GrayImage, ImageFormat, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_line_segment_mut};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::data::Point;

/// Errors from drawing or writing a figure. Each names the figure's output path.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// The inputs cannot make this figure (mismatched lengths, nothing to draw, bad sizes).
    #[error("cannot draw {path}: {reason}")]
    InvalidInput { path: PathBuf, reason: String },
    /// Plotters failed while drawing. Its error types are generic over the backend, so only
    /// the message is kept.
    #[error("cannot draw {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    /// Creating the directory, the temporary file or renaming it failed.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("cannot encode {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

/// One line of a line chart ([`loss_curves`]) or one method of a CED plot ([`ced_curves`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// For [`loss_curves`]: one value per epoch, starting at epoch 1.
    /// For [`ced_curves`]: one normalised error per image.
    pub values: Vec<f32>,
    /// Draw dashed (e.g. validation vs. solid training curves).
    pub dashed: bool,
}

/// One image of a [`landmark_grid`].
#[derive(Debug, Clone)]
pub struct Tile {
    pub image: GrayImage,
    /// Ground-truth landmarks in pixels of `image`.
    pub truth: Vec<Point>,
    /// Predicted landmarks in pixels of `image`, if any.
    pub predicted: Option<Vec<Point>>,
    /// Text drawn above the tile, e.g. `"12-3m  err 4.1 px"`.
    pub caption: String,
}

/// Font family name registered with plotters; every text style below uses it.
const FONT: &str = "sans-serif";

/// Qualitative colours (Tableau 10): distinct, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const TRUTH_COLOUR: Rgb<u8> = Rgb([0, 210, 0]);
const TRUTH_OUTLINE: Rgb<u8> = Rgb([0, 60, 0]);
const PREDICTION_COLOUR: Rgb<u8> = Rgb([235, 20, 20]);
const OFFSET_COLOUR: Rgb<u8> = Rgb([255, 215, 0]);

type DrawResult = Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Registers DejaVu Sans as plotters' "sans-serif" font. Plotters is built without system
/// font lookup, so text drawing fails with `FontUnavailable` until this has run.
fn ensure_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // Fails only for malformed font bytes; text drawing would then report a Draw error.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Plotters resolves the font when the style is built, so this registers it first.
fn text_style(size: u32) -> TextStyle<'static> {
    TextStyle::from(font(size))
}

fn font(size: u32) -> FontDesc<'static> {
    ensure_font();
    (FONT, size).into_font()
}

fn invalid(path: &Path, reason: impl Into<String>) -> FigureError {
    FigureError::InvalidInput {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn draw_error(path: &Path, reason: impl std::fmt::Display) -> FigureError {
    FigureError::Draw {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Runs `draw` on a white `width`x`height` plotters canvas and returns the pixels.
fn render<F>(path: &Path, width: u32, height: u32, draw: F) -> Result<RgbImage, FigureError>
where
    F: FnOnce(&Area<'_>) -> DrawResult,
{
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    draw_text_layer(path, &mut image, draw)?;
    Ok(image)
}

/// Runs `draw` with a plotters canvas over existing pixels (for text on `image`-drawn figures).
fn draw_text_layer<F>(path: &Path, image: &mut RgbImage, draw: F) -> Result<(), FigureError>
where
    F: FnOnce(&Area<'_>) -> DrawResult,
{
    ensure_font();
    let size = image.dimensions();
    let root = BitMapBackend::with_buffer(image, size).into_drawing_area();
    draw(&root).map_err(|e| draw_error(path, e))?;
    root.present().map_err(|e| draw_error(path, e))
}

/// Writes `image` as a PNG to `path` atomically (temporary file in the same directory, then
/// rename), creating the parent directory if needed. The format is PNG whatever the extension.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<(), FigureError> {
    let io_error = |source| FigureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let Some(name) = path.file_name() else {
        return Err(invalid(path, "the path has no file name"));
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = image
        .save_with_format(&tmp, ImageFormat::Png)
        .map_err(|source| FigureError::Encode {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_error));
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Tick label text on a linear axis spanning `span`: float noise around zero (like `-2e-16`)
/// reads as 0.
fn format_linear_tick(value: f64, span: f64) -> String {
    if value.abs() < 1e-9 * span {
        "0".to_string()
    } else {
        format_tick(value)
    }
}

/// Tick label text: short decimals for ordinary magnitudes, scientific notation otherwise.
fn format_tick(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".to_string()
    } else if (1e-3..1e5).contains(&magnitude) {
        let decimals = (3 - magnitude.log10().floor() as i32).clamp(0, 6) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        format!("{value:.0e}")
    }
}

/// Log-scale axis over positive values with ticks at 1-9, 1-2-5, ... x 10^k, whichever fits.
/// Plotters' own log axis repeats the decade label and crowds the grid.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Candidate ticks `m x 10^e` within the range, for decades `e` that are multiples of `step`.
    fn ticks(&self, mantissas: &[f64], step: i32) -> Vec<f64> {
        let first = self.lo.log10().floor() as i32;
        let last = self.hi.log10().ceil() as i32;
        (first..=last)
            .filter(|e| e.rem_euclid(step) == 0)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| *v >= self.lo * (1.0 - 1e-9) && *v <= self.hi * (1.0 + 1e-9))
            .collect()
    }
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.lo.log10(), self.hi.log10());
        let t = (value.log10() - lo) / (hi - lo);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let max = hint.max_num_points();
        let all: Vec<f64> = (1..=9).map(f64::from).collect();
        for mantissas in [&all[..], &[1.0, 2.0, 5.0], &[1.0, 3.0], &[1.0]] {
            let ticks = self.ticks(mantissas, 1);
            if ticks.len() <= max {
                return ticks;
            }
        }
        (2..)
            .map(|step| self.ticks(&[1.0], step))
            .find(|ticks| ticks.len() <= max.max(1))
            .unwrap_or_default()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Splits a curve into runs of consecutive drawable values, so gaps (NaN, inf, or values the
/// axis cannot show) break the line instead of being bridged.
fn drawable_runs(
    values: &[f32],
    keep: impl Fn(f32) -> bool,
    x_of: impl Fn(usize) -> f64,
) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for (i, &value) in values.iter().enumerate() {
        if keep(value) {
            current.push((x_of(i), f64::from(value)));
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// Draws one labelled curve (its runs), solid or dashed, with a matching legend entry.
fn draw_curve<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    runs: &[Vec<(f64, f64)>],
    label: &str,
    dashed: bool,
    colour: RGBColor,
    markers: bool,
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    let style = colour.stroke_width(2);
    // An empty series carries the legend entry, so curves with nothing drawable still appear.
    let anno = chart.draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?;
    if dashed {
        anno.label(label)
            .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], 5, 3, style));
    } else {
        anno.label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    for run in runs {
        if dashed {
            chart.draw_series(DashedLineSeries::new(run.clone(), 8, 5, style))?;
        } else {
            chart.draw_series(LineSeries::new(run.clone(), style))?;
        }
        // A lone point has no line to show it.
        if markers || run.len() == 1 {
            chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    Ok(())
}

fn draw_legend<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(text_style(15))
        .draw()?;
    Ok(())
}

/// Line chart of per-epoch losses with a log-scale y axis (losses span decades).
///
/// Series may differ in length; non-finite and non-positive values are skipped (they break the
/// line). With nothing drawable the axes are drawn empty with a note, so a diverged run still
/// gets a figure.
pub fn loss_curves(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Curve],
) -> Result<(), FigureError> {
    let drawable = |v: f32| v.is_finite() && v > 0.0;
    let epochs = series.iter().map(|c| c.values.len()).max().unwrap_or(0);
    let (lo, hi) = series
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .filter(|&v| drawable(v))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    let empty = lo > hi;
    let (y_lo, y_hi) = if empty {
        (0.01, 1.0)
    } else {
        // At least one decade, so the log axis always has labelled ticks.
        let centre = (lo * hi).sqrt();
        (
            (lo / 1.25).min(centre / 10f64.sqrt()),
            (hi * 1.25).max(centre * 10f64.sqrt()),
        )
    };
    let x_hi = epochs.max(2) as f64;
    let markers = epochs <= 40;

    let image = render(path, 900, 600, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, text_style(22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(1.0..x_hi, LogAxis { lo: y_lo, hi: y_hi })?;
        chart
            .configure_mesh()
            .x_labels(epochs.clamp(2, 10))
            .x_desc("epoch")
            .y_desc(y_label)
            // Epochs are whole numbers.
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format_tick(*y))
            .label_style(text_style(14))
            .axis_desc_style(text_style(16))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()?;
        for (i, curve) in series.iter().enumerate() {
            let runs = drawable_runs(&curve.values, drawable, |i| i as f64 + 1.0);
            let colour = PALETTE[i % PALETTE.len()];
            draw_curve(
                &mut chart,
                &runs,
                &curve.label,
                curve.dashed,
                colour,
                markers,
            )?;
        }
        if !series.is_empty() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        if empty {
            chart.draw_series(std::iter::once(Text::new(
                "no finite positive values",
                (1.2, (y_lo * y_hi).sqrt()),
                text_style(18),
            )))?;
        }
        Ok(())
    })?;
    save_png(path, &image)
}

/// Vertical bar chart, e.g. mean error per landmark.
///
/// Every label is shown for up to 70 bars (the figure widens to keep them apart, and labels too
/// wide for their bar are drawn vertically), beyond that every k-th. Non-finite values draw
/// no bar.
pub fn bar_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    labels: &[String],
    values: &[f32],
) -> Result<(), FigureError> {
    if labels.len() != values.len() {
        return Err(invalid(
            path,
            format!("{} labels for {} values", labels.len(), values.len()),
        ));
    }
    if values.is_empty() {
        return Err(invalid(path, "no bars to draw"));
    }
    let n = values.len();
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((0f64, 0f64), |(lo, hi), &v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        });
    let (lo, hi) = if hi > lo { (lo, hi) } else { (0.0, 1.0) };
    let pad = 0.08 * (hi - lo);
    let (y_lo, y_hi) = (
        if lo < 0.0 { lo - pad } else { 0.0 },
        if hi > 0.0 { hi + pad } else { 0.0 },
    );

    let stride = n.div_ceil(70);
    let width = (160 + 18 * n.min(120)).clamp(900, 2400) as u32;
    // Labels go under their bars, turned vertical (drawn by `vertical_label`: plotters
    // misplaces rotated tick labels) when the widest one would overlap its neighbours.
    let label_font = font(X_LABEL_FONT);
    let label_width = |l: &str| label_font.box_size(l).map_or(0, |(w, _)| w);
    let longest = labels
        .iter()
        .step_by(stride)
        .map(|l| label_width(l))
        .max()
        .unwrap_or(0);
    let slot = f64::from(width - BAR_Y_LABEL_AREA - 2 * BAR_MARGIN) / n as f64 * stride as f64;
    let vertical = f64::from(longest) > 0.9 * slot;
    let label_area = if vertical {
        longest.min(MAX_VERTICAL_LABEL) + 45
    } else {
        55
    };
    let height = 550 + label_area;
    let x_format = |x: &f64| {
        let index = x.round();
        let whole = index >= 0.0 && (index as usize) < n && (x - index).abs() < 1e-3;
        if whole && !vertical {
            labels[index as usize].clone()
        } else {
            String::new()
        }
    };
    // Where each shown label's bar meets the x axis, in figure pixels.
    let mut anchors: Vec<(usize, (i32, i32))> = Vec::new();

    let mut image = render(path, width, height, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, text_style(22))
            .margin(BAR_MARGIN)
            .x_label_area_size(label_area)
            .y_label_area_size(BAR_Y_LABEL_AREA)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            // Ticks land on whole numbers: one per bar up to 70 bars.
            .x_labels(n.div_ceil(stride))
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&x_format)
            .y_label_formatter(&|y| format_linear_tick(*y, y_hi - y_lo))
            .x_label_style(text_style(X_LABEL_FONT))
            .y_label_style(text_style(14))
            .axis_desc_style(text_style(16))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()?;
        let fill = PALETTE[0].filled();
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let x = i as f64;
                    Rectangle::new([(x - 0.4, 0.0), (x + 0.4, f64::from(v))], fill)
                }),
        )?;
        if vertical {
            anchors = (0..n)
                .step_by(stride)
                .map(|i| (i, chart.backend_coord(&(i as f64, y_lo))))
                .collect();
        }
        Ok(())
    })?;
    for (i, (x, y)) in anchors {
        let text = fit_text(&labels[i], MAX_VERTICAL_LABEL, &label_font);
        let label = vertical_label(path, &text)?;
        let left = i64::from(x) - i64::from(label.width() / 2);
        image::imageops::replace(&mut image, &label, left, i64::from(y) + 8);
    }
    save_png(path, &image)
}

const BAR_MARGIN: u32 = 15;
const BAR_Y_LABEL_AREA: u32 = 80;
const X_LABEL_FONT: u32 = 12;
const MAX_VERTICAL_LABEL: u32 = 250;

/// `text` on white, turned to read bottom to top, its right end (the text's end) at the top.
fn vertical_label(path: &Path, text: &str) -> Result<RgbImage, FigureError> {
    let (w, h) = font(X_LABEL_FONT).box_size(text).unwrap_or((0, 0));
    let mut strip = RgbImage::from_pixel(w + 4, h.max(X_LABEL_FONT) + 4, Rgb([255, 255, 255]));
    draw_text_layer(path, &mut strip, |root| {
        root.draw(&Text::new(text, (2, 2), text_style(X_LABEL_FONT)))?;
        Ok(())
    })?;
    Ok(image::imageops::rotate270(&strip))
}

/// Grid of convolution kernels (row-major `kernel`x`kernel` weights), each drawn with `cell`
/// pixels per weight and normalised on its own (min black, max white), since kernels differ
/// in scale and only their pattern matters. Constant kernels are mid-gray, non-finite weights
/// red; the background between kernels is light blue.
pub fn filter_grid(
    path: &Path,
    filters: &[Vec<f32>],
    kernel: usize,
    cell: u32,
) -> Result<(), FigureError> {
    if filters.is_empty() {
        return Err(invalid(path, "no filters to draw"));
    }
    if kernel == 0 || cell == 0 {
        return Err(invalid(path, "kernel and cell sizes must be positive"));
    }
    if let Some((i, f)) = filters
        .iter()
        .enumerate()
        .find(|(_, f)| f.len() != kernel * kernel)
    {
        return Err(invalid(
            path,
            format!(
                "filter {i} has {} weights, expected {kernel}x{kernel}",
                f.len()
            ),
        ));
    }
    const GAP: u32 = 2;
    let columns = filters.len().min(8) as u32;
    let rows = filters.len().div_ceil(8) as u32;
    let side = kernel as u32 * cell;
    let width = columns * side + (columns + 1) * GAP;
    let height = rows * side + (rows + 1) * GAP;
    // A tinted background, so gaps never blend into gray weights.
    let mut image = RgbImage::from_pixel(width, height, Rgb([150, 180, 215]));
    for (index, weights) in filters.iter().enumerate() {
        let (lo, hi) = weights
            .iter()
            .filter(|w| w.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &w| {
                (lo.min(w), hi.max(w))
            });
        let x0 = GAP + (index as u32 % 8) * (side + GAP);
        let y0 = GAP + (index as u32 / 8) * (side + GAP);
        for (k, &w) in weights.iter().enumerate() {
            let colour = if !w.is_finite() {
                Rgb([255, 0, 0])
            } else if hi > lo {
                let v = ((w - lo) / (hi - lo) * 255.0).round() as u8;
                Rgb([v, v, v])
            } else {
                Rgb([128, 128, 128])
            };
            let bx = x0 + (k % kernel) as u32 * cell;
            let by = y0 + (k / kernel) as u32 * cell;
            for y in by..by + cell {
                for x in bx..bx + cell {
                    image.put_pixel(x, y, colour);
                }
            }
        }
    }
    save_png(path, &image)
}

/// Grid layout of [`landmark_grid`]; shared with its tests.
struct GridLayout {
    columns: u32,
    cell_width: u32,
    cell_height: u32,
    legend_height: u32,
}

const GRID_PAD: u32 = 6;
const CAPTION_HEIGHT: u32 = 20;
const CAPTION_FONT: u32 = 14;
const LEGEND_HEIGHT: u32 = 26;

impl GridLayout {
    /// Cells fit the largest scaled image and, within reason, the longest caption (longer
    /// ones are shortened); the legend strip exists only when some tile has predictions.
    fn plan(tiles: &[Tile], rendered: &[RgbImage], columns: usize, font: &FontDesc<'_>) -> Self {
        let max_width = rendered.iter().map(|r| r.width()).max().unwrap_or(1);
        let max_height = rendered.iter().map(|r| r.height()).max().unwrap_or(1);
        let caption_width = tiles
            .iter()
            .map(|t| font.box_size(&t.caption).map(|(w, _)| w + 4).unwrap_or(0))
            .max()
            .unwrap_or(0);
        let any_prediction = tiles.iter().any(|t| t.predicted.is_some());
        Self {
            columns: columns.clamp(1, tiles.len().max(1)) as u32,
            cell_width: max_width.max(caption_width.min(max_width.max(360))),
            cell_height: max_height,
            legend_height: if any_prediction { LEGEND_HEIGHT } else { 0 },
        }
    }

    /// Whole-figure size for `count` tiles (wide enough for the legend when there is one).
    fn size(&self, count: usize) -> (u32, u32) {
        let rows = count.div_ceil(self.columns as usize) as u32;
        let min_width = if self.legend_height > 0 { 300 } else { 0 };
        let width = (self.columns * (self.cell_width + GRID_PAD) + GRID_PAD).max(min_width);
        let height =
            self.legend_height + rows * (CAPTION_HEIGHT + self.cell_height + GRID_PAD) + GRID_PAD;
        (width, height)
    }

    /// Top-left corner of the caption strip of tile `index`.
    fn cell_origin(&self, index: usize) -> (u32, u32) {
        let column = index as u32 % self.columns;
        let row = index as u32 / self.columns;
        (
            GRID_PAD + column * (self.cell_width + GRID_PAD),
            self.legend_height + GRID_PAD + row * (CAPTION_HEIGHT + self.cell_height + GRID_PAD),
        )
    }

    /// Top-left corner of the (scaled) image of a tile of scaled width `width`, centred in its
    /// cell under the caption.
    fn image_origin(&self, index: usize, width: u32) -> (u32, u32) {
        let (x, y) = self.cell_origin(index);
        (x + (self.cell_width - width) / 2, y + CAPTION_HEIGHT)
    }
}

/// Upscales a tile by `scale` (nearest neighbour: keeps pixels crisp) and draws its landmarks:
/// ground truth as outlined green dots, predictions as red crosses, joined by a yellow line
/// when both sets have the same length.
fn render_tile(tile: &Tile, scale: u32) -> RgbImage {
    let (w, h) = tile.image.dimensions();
    let mut out = RgbImage::from_fn(w * scale, h * scale, |x, y| {
        let v = tile.image.get_pixel(x / scale, y / scale)[0];
        Rgb([v, v, v])
    });
    let s = scale as f32;
    // Continuous coordinates (pixel i covers [i, i+1)) to imageproc's (pixel i centred on i).
    let to_canvas = |p: &Point| {
        (p[0].is_finite() && p[1].is_finite()).then(|| (p[0] * s - 0.5, p[1] * s - 0.5))
    };
    let centre = |(x, y): (f32, f32)| (x.round() as i32, y.round() as i32);
    let radius = scale.clamp(2, 4) as i32;

    let predicted = tile.predicted.as_deref().unwrap_or(&[]);
    if predicted.len() == tile.truth.len() {
        for (t, p) in tile.truth.iter().zip(predicted) {
            if let (Some(t), Some(p)) = (to_canvas(t), to_canvas(p)) {
                draw_line_segment_mut(&mut out, t, p, OFFSET_COLOUR);
            }
        }
    }
    for t in tile.truth.iter().filter_map(to_canvas) {
        draw_filled_circle_mut(&mut out, centre(t), radius + 1, TRUTH_OUTLINE);
        draw_filled_circle_mut(&mut out, centre(t), radius, TRUTH_COLOUR);
    }
    for p in predicted.iter().filter_map(to_canvas) {
        draw_cross(&mut out, centre(p), radius + 1, PREDICTION_COLOUR);
    }
    out
}

/// A diagonal cross, two pixels thick so it reads at any scale.
fn draw_cross(image: &mut RgbImage, (x, y): (i32, i32), arm: i32, colour: Rgb<u8>) {
    let (x, y, a) = (x as f32, y as f32, arm as f32);
    for dx in [0.0, 1.0] {
        draw_line_segment_mut(image, (x - a + dx, y - a), (x + a + dx, y + a), colour);
        draw_line_segment_mut(image, (x - a + dx, y + a), (x + a + dx, y - a), colour);
    }
}

/// Shortens `text` with an ellipsis until it fits `max_width` pixels in `font`.
fn fit_text(text: &str, max_width: u32, font: &FontDesc<'_>) -> String {
    let width = |t: &str| font.box_size(t).map(|(w, _)| w).unwrap_or(0);
    if width(text) <= max_width {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().chain(std::iter::once(&'…')).collect();
        if width(&candidate) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// Grid of images with ground-truth (green) and predicted (red) landmarks, each upscaled by
/// the integer `scale` and captioned. Tiles may differ in size: cells fit the largest.
pub fn landmark_grid(
    path: &Path,
    tiles: &[Tile],
    columns: usize,
    scale: u32,
) -> Result<(), FigureError> {
    if tiles.is_empty() {
        return Err(invalid(path, "no tiles to draw"));
    }
    if columns == 0 || scale == 0 {
        return Err(invalid(path, "columns and scale must be positive"));
    }
    if let Some(i) = tiles
        .iter()
        .position(|t| t.image.width() == 0 || t.image.height() == 0)
    {
        return Err(invalid(path, format!("tile {i} has an empty image")));
    }
    let caption_font = font(CAPTION_FONT);
    let rendered: Vec<RgbImage> = tiles.iter().map(|t| render_tile(t, scale)).collect();
    let layout = GridLayout::plan(tiles, &rendered, columns, &caption_font);
    let any_prediction = layout.legend_height > 0;
    let (width, height) = layout.size(tiles.len());

    let mut grid = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (index, tile) in rendered.iter().enumerate() {
        let (x0, y0) = layout.image_origin(index, tile.width());
        image::imageops::replace(&mut grid, tile, i64::from(x0), i64::from(y0));
    }
    let legend_y = (GRID_PAD + LEGEND_HEIGHT / 2) as i32 - 3;
    if any_prediction {
        draw_filled_circle_mut(&mut grid, (GRID_PAD as i32 + 6, legend_y), 5, TRUTH_OUTLINE);
        draw_filled_circle_mut(&mut grid, (GRID_PAD as i32 + 6, legend_y), 4, TRUTH_COLOUR);
        draw_cross(
            &mut grid,
            (GRID_PAD as i32 + 136, legend_y),
            5,
            PREDICTION_COLOUR,
        );
    }
    let captions: Vec<(String, (i32, i32))> = tiles
        .iter()
        .enumerate()
        .map(|(index, tile)| {
            let (x, y) = layout.cell_origin(index);
            let text = fit_text(&tile.caption, layout.cell_width, &caption_font);
            (text, (x as i32, y as i32 + 2))
        })
        .collect();
    draw_text_layer(path, &mut grid, |root| {
        let style = text_style(CAPTION_FONT);
        if any_prediction {
            // Text is positioned by its top; this centres its x-height on the markers.
            let y = legend_y - 4;
            let x = GRID_PAD as i32;
            root.draw(&Text::new("ground truth", (x + 16, y), style.clone()))?;
            root.draw(&Text::new("prediction", (x + 146, y), style.clone()))?;
        }
        for (text, position) in &captions {
            root.draw(&Text::new(text.as_str(), *position, style.clone()))?;
        }
        Ok(())
    })?;
    save_png(path, &grid)
}

/// Step curve of the cumulative error distribution on `[0, max_error]`: for each `x`, the
/// fraction of all images (non-finite errors count as failures) with error `<= x`.
fn ced_steps(errors: &[f32], max_error: f64) -> Vec<(f64, f64)> {
    if errors.is_empty() {
        return Vec::new();
    }
    let n = errors.len() as f64;
    let mut sorted: Vec<f64> = errors
        .iter()
        .filter(|e| e.is_finite())
        .map(|&e| f64::from(e.max(0.0)))
        .filter(|&e| e <= max_error)
        .collect();
    sorted.sort_by(f64::total_cmp);
    let mut points = vec![(0.0, 0.0)];
    let mut count = 0usize;
    for (i, &e) in sorted.iter().enumerate() {
        count += 1;
        // Emit one vertical jump per distinct error value.
        if sorted.get(i + 1) != Some(&e) {
            points.push((e, points.last().map_or(0.0, |p| p.1)));
            points.push((e, count as f64 / n));
        }
    }
    points.push((max_error, count as f64 / n));
    points
}

/// Cumulative error distribution plot: fraction of images whose normalised error is at most
/// `x`, for `x` in `[0, max_error]`, one curve per method.
pub fn ced_curves(
    path: &Path,
    title: &str,
    curves: &[Curve],
    max_error: f32,
) -> Result<(), FigureError> {
    if !(max_error.is_finite() && max_error > 0.0) {
        return Err(invalid(
            path,
            format!("max_error must be positive, got {max_error}"),
        ));
    }
    let max_error = f64::from(max_error);
    let image = render(path, 900, 600, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, text_style(22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            // Headroom so a curve reaching 1 is not hidden by the frame.
            .build_cartesian_2d(0.0..max_error, 0.0..1.02)?;
        chart
            .configure_mesh()
            .x_desc("normalised error")
            .y_desc("fraction of images")
            .x_label_formatter(&|x| format_linear_tick(*x, max_error))
            .y_label_formatter(&|y| format_linear_tick(*y, 1.0))
            .label_style(text_style(14))
            .axis_desc_style(text_style(16))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()?;
        for (i, curve) in curves.iter().enumerate() {
            let steps = ced_steps(&curve.values, max_error);
            let runs: Vec<_> = (!steps.is_empty()).then_some(steps).into_iter().collect();
            let colour = PALETTE[i % PALETTE.len()];
            draw_curve(&mut chart, &runs, &curve.label, curve.dashed, colour, false)?;
        }
        if !curves.is_empty() {
            draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        Ok(())
    })?;
    save_png(path, &image)
}

/// Viridis colour stops (perceptually uniform, colour-blind safe).
const VIRIDIS: [[f32; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];

fn viridis(t: f32) -> Rgb<u8> {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let position = t * (VIRIDIS.len() - 1) as f32;
    let i = (position.floor() as usize).min(VIRIDIS.len() - 2);
    let f = position - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    Rgb(std::array::from_fn(|c| {
        (a[c] + (b[c] - a[c]) * f).round() as u8
    }))
}

/// Colours a row-major `width`x`height` grid of values with a viridis-like map after
/// normalising to `[0, 1]` (min to max of the finite values). Missing or non-finite values and
/// constant inputs map to the low end.
pub fn heatmap_image(values: &[f32], width: usize, height: usize) -> RgbImage {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = hi - lo;
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let value = values.get(y as usize * width + x as usize).copied();
        match value {
            Some(v) if v.is_finite() && span > 0.0 => viridis((v - lo) / span),
            _ => viridis(0.0),
        }
    })
}

/// One row of a [`heatmap_grid`]: a face with its points, then maps drawn over it.
#[derive(Debug, Clone)]
pub struct HeatmapRow {
    pub face: Tile,
    /// `(caption, row-major values)` of maps of `map_size`, each drawn over the face.
    pub maps: Vec<(String, Vec<f32>)>,
    /// `(width, height)` of every map.
    pub map_size: (usize, usize),
}

/// Rows of a face (points drawn as in [`landmark_grid`]) followed by its heatmaps, each
/// coloured (viridis, min to max) and blended over the face at the face's drawn size.
pub fn heatmap_grid(path: &Path, rows: &[HeatmapRow], scale: u32) -> Result<(), FigureError> {
    if rows.is_empty() || scale == 0 {
        return Err(invalid(path, "no rows to draw"));
    }
    let columns = 1 + rows.iter().map(|r| r.maps.len()).max().unwrap_or(0) as u32;
    let faces: Vec<RgbImage> = rows.iter().map(|r| render_tile(&r.face, scale)).collect();
    let cell_w = faces.iter().map(|f| f.width()).max().unwrap_or(1).max(120);
    let cell_h = faces.iter().map(|f| f.height()).max().unwrap_or(1);
    let row_h = CAPTION_HEIGHT + cell_h + GRID_PAD;
    let width = GRID_PAD + columns * (cell_w + GRID_PAD);
    let height = GRID_PAD + rows.len() as u32 * row_h;
    let mut grid = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut captions = Vec::new();
    let caption_font = font(CAPTION_FONT);
    for (r, (row, face)) in rows.iter().zip(&faces).enumerate() {
        let y0 = GRID_PAD + r as u32 * row_h;
        let cell_x = |c: u32| GRID_PAD + c * (cell_w + GRID_PAD);
        image::imageops::replace(
            &mut grid,
            face,
            i64::from(cell_x(0)),
            i64::from(y0 + CAPTION_HEIGHT),
        );
        captions.push((row.face.caption.clone(), (cell_x(0), y0)));
        let (mw, mh) = row.map_size;
        let gray = image::imageops::resize(
            &row.face.image,
            face.width(),
            face.height(),
            image::imageops::FilterType::Triangle,
        );
        for (c, (caption, values)) in row.maps.iter().enumerate() {
            let coloured = image::imageops::resize(
                &heatmap_image(values, mw, mh),
                face.width(),
                face.height(),
                image::imageops::FilterType::Triangle,
            );
            let blended = RgbImage::from_fn(face.width(), face.height(), |x, y| {
                let g = gray.get_pixel(x, y)[0] as f32;
                let h = coloured.get_pixel(x, y).0;
                Rgb(h.map(|v| (0.35 * g + 0.65 * v as f32).round() as u8))
            });
            let x = cell_x(c as u32 + 1);
            image::imageops::replace(
                &mut grid,
                &blended,
                i64::from(x),
                i64::from(y0 + CAPTION_HEIGHT),
            );
            captions.push((caption.clone(), (x, y0)));
        }
    }
    let captions: Vec<(String, (i32, i32))> = captions
        .into_iter()
        .map(|(text, (x, y))| {
            (
                fit_text(&text, cell_w, &caption_font),
                (x as i32, y as i32 + 2),
            )
        })
        .collect();
    draw_text_layer(path, &mut grid, |root| {
        let style = text_style(CAPTION_FONT);
        for (text, position) in &captions {
            root.draw(&Text::new(text.as_str(), *position, style.clone()))?;
        }
        Ok(())
    })?;
    save_png(path, &grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_grid_draws_faces_and_maps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heatmaps.png");
        let face = Tile {
            image: GrayImage::from_fn(32, 32, |x, y| image::Luma([((x + y) * 4) as u8])),
            truth: vec![[10.0, 12.0]],
            predicted: Some(vec![[11.0, 12.5]]),
            caption: "face".into(),
        };
        let map: Vec<f32> = (0..16 * 16)
            .map(|i| if i == 5 * 16 + 5 { 1.0 } else { 0.0 })
            .collect();
        let row = HeatmapRow {
            face,
            maps: vec![("all".into(), map.clone()), ("point 0".into(), map)],
            map_size: (16, 16),
        };
        heatmap_grid(&path, &[row.clone(), row], 4).unwrap();
        let image = decode(&path);
        assert_eq!(image.width(), GRID_PAD + 3 * (128 + GRID_PAD));
        assert_not_flat(&image);
        assert!(heatmap_grid(&path, &[], 4).is_err());
    }

    fn decode(path: &Path) -> RgbImage {
        image::open(path).expect("figure decodes").to_rgb8()
    }

    fn assert_not_flat(image: &RgbImage) {
        let first = image.get_pixel(0, 0);
        assert!(
            image.pixels().any(|p| p != first),
            "image is one flat colour"
        );
    }

    fn curve(label: &str, values: Vec<f32>, dashed: bool) -> Curve {
        Curve {
            label: label.to_string(),
            values,
            dashed,
        }
    }

    #[test]
    fn loss_curves_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<f32> = (1..=30).map(|e| 1.0 / e as f32).collect();
        let mut valid: Vec<f32> = (1..=20).map(|e| 1.5 / e as f32).collect();
        valid[3] = f32::NAN;
        valid[4] = 0.0;
        let series = [curve("train", train, false), curve("valid", valid, true)];
        loss_curves(&path, "losses", "loss (MSE)", &series).unwrap();
        let image = decode(&path);
        assert_eq!(image.dimensions(), (900, 600));
        assert_not_flat(&image);
        assert!(!path.with_file_name("loss.png.tmp").exists());
    }

    #[test]
    fn loss_curves_tolerates_empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        loss_curves(&path, "nothing", "loss", &[]).unwrap();
        let series = [
            curve("nan", vec![f32::NAN], false),
            curve("none", vec![], true),
        ];
        loss_curves(&path, "nothing", "loss", &series).unwrap();
        assert_not_flat(&decode(&path));
    }

    #[test]
    fn bar_chart_writes_png_and_checks_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        let labels: Vec<String> = (0..58).map(|i| i.to_string()).collect();
        let values: Vec<f32> = (0..58).map(|i| 2.0 + (i as f32 * 0.3).sin()).collect();
        bar_chart(
            &path,
            "per landmark",
            "landmark",
            "error (px)",
            &labels,
            &values,
        )
        .unwrap();
        let image = decode(&path);
        assert!(image.width() >= 900);
        assert_eq!(image.height(), 605);
        assert_not_flat(&image);
        let err = bar_chart(&path, "t", "x", "y", &labels[..3], &values).unwrap_err();
        assert!(matches!(err, FigureError::InvalidInput { .. }));
    }

    #[test]
    fn filter_grid_layout_and_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("filters.png");
        let filters: Vec<Vec<f32>> = (0..10)
            .map(|f| {
                (0..9)
                    .map(|w| (w as f32 - 4.0) * (f as f32 + 1.0))
                    .collect()
            })
            .collect();
        filter_grid(&path, &filters, 3, 4).unwrap();
        let image = decode(&path);
        // 8 columns x 2 rows of 12 px blocks with 2 px gaps.
        assert_eq!(image.dimensions(), (8 * 12 + 9 * 2, 2 * 12 + 3 * 2));
        // First weight is each filter's minimum (black), last its maximum (white).
        assert_eq!(image.get_pixel(2, 2), &Rgb([0, 0, 0]));
        assert_eq!(image.get_pixel(2 + 11, 2 + 11), &Rgb([255, 255, 255]));
        let err = filter_grid(&path, &[vec![0.0; 8]], 3, 4).unwrap_err();
        assert!(matches!(err, FigureError::InvalidInput { .. }));
    }

    #[test]
    fn landmark_grid_draws_truth_where_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let image = GrayImage::from_fn(40, 30, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
        let truth: Vec<Point> = vec![[10.5, 12.5], [30.0, 20.0]];
        let tile = Tile {
            image: image.clone(),
            truth: truth.clone(),
            predicted: None,
            caption: "a tile".to_string(),
        };
        let small = Tile {
            image: GrayImage::from_pixel(20, 20, image::Luma([90])),
            truth: vec![[5.0, 5.0]],
            predicted: Some(vec![[7.0, 6.0]]),
            caption: "small one with a rather long caption that must be shortened".to_string(),
        };
        let scale = 3;
        landmark_grid(&path, &[tile.clone(), small.clone()], 2, scale).unwrap();
        let out = decode(&path);
        assert_not_flat(&out);
        let tiles = [tile, small];
        let rendered: Vec<RgbImage> = tiles.iter().map(|t| render_tile(t, scale)).collect();
        let layout = GridLayout::plan(&tiles, &rendered, 2, &font(CAPTION_FONT));
        assert_eq!(out.dimensions(), layout.size(2));
        let (x0, y0) = layout.image_origin(0, 40 * scale);
        let is_green = |p: &Rgb<u8>| p[1] > 150 && p[0] < 80 && p[2] < 80;
        for p in &truth {
            let x = x0 + (p[0] * scale as f32) as u32;
            let y = y0 + (p[1] * scale as f32) as u32;
            let pixel = out.get_pixel(x, y);
            assert!(is_green(pixel), "pixel at ({x}, {y}) is {pixel:?}");
        }
        // The prediction on the second tile is red.
        let (x1, y1) = layout.image_origin(1, 20 * scale);
        let pixel = out.get_pixel(x1 + 7 * scale, y1 + 6 * scale);
        assert!(
            pixel[0] > 200 && pixel[1] < 60,
            "prediction pixel is {pixel:?}"
        );
    }

    #[test]
    fn ced_curves_writes_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ced.png");
        let a: Vec<f32> = (0..100).map(|i| 0.01 + i as f32 * 0.0008).collect();
        let b: Vec<f32> = (0..50).map(|i| 0.02 + i as f32 * 0.0015).collect();
        ced_curves(
            &path,
            "CED",
            &[curve("a", a, false), curve("b", b, true)],
            0.08,
        )
        .unwrap();
        let image = decode(&path);
        assert_eq!(image.dimensions(), (900, 600));
        assert_not_flat(&image);
        assert!(ced_curves(&path, "CED", &[], 0.0).is_err());
    }

    #[test]
    fn ced_steps_match_auc() {
        let errors = [0.0, 0.04, 0.04, 0.1];
        let steps = ced_steps(&errors, 0.08);
        assert_eq!(steps.last(), Some(&(0.08, 0.75)));
        let area: f64 = steps.windows(2).map(|w| (w[1].0 - w[0].0) * w[0].1).sum();
        assert!((area / 0.08 - f64::from(crate::eval::ced_auc(&errors, 0.08))).abs() < 1e-6);
    }

    #[test]
    fn heatmap_maps_min_and_max_to_the_ends() {
        let image = heatmap_image(&[0.0, 1.0, 2.0, f32::NAN], 2, 2);
        assert_eq!(image.dimensions(), (2, 2));
        assert_eq!(image.get_pixel(0, 0), &Rgb([68, 1, 84]));
        assert_eq!(image.get_pixel(0, 1), &Rgb([253, 231, 37]));
        assert_eq!(image.get_pixel(1, 1), &Rgb([68, 1, 84]));
        assert_eq!(viridis(0.5), Rgb([33, 145, 140]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("heat.png");
        save_png(&path, &heatmap_image(&[0.0, 1.0], 2, 1)).unwrap();
        assert_eq!(decode(&path).dimensions(), (2, 1));
    }
}
