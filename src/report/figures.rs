//! The report's charts, drawn with `plotters` into RGB buffers. Text uses a font bundled in
//! the binary (Ubuntu Light from `epaint_default_fonts`), so no system font is needed.

use std::sync::Once;

use image::RgbImage;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub const WIDTH: u32 = 720;
pub const HEIGHT: u32 = 540;
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error + 'static>>;

fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled into the binary; a failure here would
        // only show as missing text, which the report's tests catch.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Draws into a `width`×`height` white canvas; `what` names the figure in an error.
pub fn render(
    what: &str,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> Result<RgbImage> {
    register_font();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(&area).map_err(|e| Error::Invalid(format!("drawing {what}: {e}")))?;
        area.present()
            .map_err(|e| Error::Invalid(format!("drawing {what}: {e}")))?;
    }
    RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| Error::Invalid(format!("drawing {what}: wrong buffer size")))
}

/// The colour of group `i` (cluster or label).
pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// The legend of every chart: top right, on a translucent white box.
fn draw_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The name of category `i` at the centre of its unit cell `[i, i + 1)` on an axis, and no
/// label at the other tick positions.
fn centred_name(names: &[String], v: f64) -> String {
    let i = v.floor() as usize;
    if (v - v.floor() - 0.5).abs() < 1e-6 && i < names.len() {
        names[i].clone()
    } else {
        String::new()
    }
}

/// `(min, max)` of `values` widened by 5 % (and to a unit range when flat).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - pad, hi + pad)
}

/// A 2-D scatter of `points`, each coloured by its group, with one legend entry per group.
pub fn scatter(
    title: &str,
    points: &[(f64, f64)],
    groups: &[usize],
    group_names: &[String],
) -> Result<RgbImage> {
    render(title, (WIDTH, HEIGHT), |area| {
        area.fill(&WHITE)?;
        let x = padded_range(points.iter().map(|p| p.0));
        let y = padded_range(points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        chart
            .configure_mesh()
            .x_desc("component 1")
            .y_desc("component 2")
            .label_style((FONT, 12))
            .draw()?;
        for (g, name) in group_names.iter().enumerate() {
            let style = colour(g).mix(0.75).filled();
            chart
                .draw_series(
                    points
                        .iter()
                        .zip(groups)
                        .filter(|(_, &group)| group == g)
                        .map(|(&p, _)| Circle::new(p, 3, style)),
                )?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 5, y), 4, colour(g).filled()));
        }
        draw_legend(&mut chart)?;
        Ok(())
    })
}

/// One named series of a line chart: `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Line charts stacked vertically, one panel per `(title, series)`, sharing the x axis name.
pub fn line_panels(what: &str, x_name: &str, panels: &[(String, Vec<Series>)]) -> Result<RgbImage> {
    let rows = panels.len().max(1);
    render(what, (WIDTH, 300 * rows as u32), |area| {
        area.fill(&WHITE)?;
        for (panel, (title, series)) in area.split_evenly((rows, 1)).iter().zip(panels) {
            let x = padded_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
            let y = padded_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
            let mut chart = ChartBuilder::on(panel)
                .caption(title.as_str(), (FONT, 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(50)
                .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
            chart
                .configure_mesh()
                .x_desc(x_name)
                .label_style((FONT, 12))
                .draw()?;
            for (i, s) in series.iter().enumerate() {
                let style = colour(i).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour(i).stroke_width(2))
                    });
            }
            draw_legend(&mut chart)?;
        }
        Ok(())
    })
}

/// A heat map of `counts` (rows × columns), each cell shaded by its share of its row and
/// labelled with its count.
pub fn heat_map(
    title: &str,
    counts: &[Vec<u64>],
    row_names: &[String],
    column_names: &[String],
    (row_axis, column_axis): (&str, &str),
) -> Result<RgbImage> {
    let (rows, columns) = (counts.len(), column_names.len());
    render(title, (WIDTH, HEIGHT), |area| {
        area.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..columns as f64, 0f64..rows as f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(column_axis)
            .y_desc(row_axis)
            .x_labels(2 * columns + 1)
            .y_labels(2 * rows + 1)
            .x_label_formatter(&|v| centred_name(column_names, *v))
            .y_label_formatter(&|v| centred_name(row_names, *v))
            .label_style((FONT, 12))
            .draw()?;
        for (r, row) in counts.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (c, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let shade = (255.0 * (1.0 - 0.85 * share)) as u8;
                let (x0, y0) = (c as f64, (rows - 1 - r) as f64);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    RGBColor(shade, shade, 255).filled(),
                )))?;
                let text_colour = if share > 0.6 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    count.to_string(),
                    (x0 + 0.4, y0 + 0.6),
                    (FONT, 12).into_font().color(&text_colour),
                )))?;
            }
        }
        Ok(())
    })
}

/// Grouped bars: for each method, one bar per score (`score_names`), in [0, 1].
pub fn grouped_bars(
    title: &str,
    methods: &[(String, Vec<f64>)],
    score_names: &[&str],
) -> Result<RgbImage> {
    let groups = methods.len();
    let per = score_names.len().max(1);
    render(title, (WIDTH, HEIGHT), |area| {
        area.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..groups as f64, 0f64..1.05)?;
        let names: Vec<String> = methods.iter().map(|(name, _)| name.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * groups + 1)
            .x_label_formatter(&|v| centred_name(&names, *v))
            .y_desc("score")
            .label_style((FONT, 12))
            .draw()?;
        let width = 0.8 / per as f64;
        for (s, score) in score_names.iter().enumerate() {
            chart
                .draw_series(methods.iter().enumerate().map(|(m, (_, values))| {
                    let x0 = m as f64 + 0.1 + s as f64 * width;
                    let v = values.get(s).copied().unwrap_or(0.0).clamp(0.0, 1.05);
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], colour(s).filled())
                }))?
                .label(*score)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(s).filled())
                });
        }
        draw_legend(&mut chart)?;
        Ok(())
    })
}
