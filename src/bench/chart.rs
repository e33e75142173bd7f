//! The SVG chart of a bench run, for the README: throughput per flow (holds/s and checkouts/s,
//! the references beside them) on the left, holdTickets latency percentiles per flow on the right.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Percentiles, Report};

/// Writes the chart of `report` to `path`.
pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    throughput(&left, report)?;
    latency(&right, report)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn throughput(area: &Area<'_>, report: &Report) -> anyhow::Result<()> {
    let mut bars: Vec<(String, f64, Option<f64>)> = report
        .flows
        .iter()
        .map(|f| (f.flow.clone(), f.holds_per_sec, Some(f.checkouts_per_sec)))
        .collect();
    bars.extend(
        report
            .references
            .iter()
            .map(|r| (r.name.clone(), r.holds_per_sec, None)),
    );
    let top = bars
        .iter()
        .map(|(_, holds, checkouts)| holds.max(checkouts.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let n = bars.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput (per second)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..top * 1.15)
        .map_err(plot_error)?;
    let names: Vec<String> = bars.iter().map(|(name, _, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| label_at(&names, *x))
        .y_desc("per second")
        .draw()
        .map_err(plot_error)?;
    let holds = bars.iter().enumerate().map(|(i, (_, holds, _))| {
        let x = i as f64;
        Rectangle::new([(x + 0.1, 0.0), (x + 0.48, *holds)], BLUE.mix(0.7).filled())
    });
    chart
        .draw_series(holds)
        .map_err(plot_error)?
        .label("holds/s")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.mix(0.7).filled()));
    let checkouts = bars
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, checkouts))| {
            let x = i as f64;
            checkouts
                .map(|c| Rectangle::new([(x + 0.52, 0.0), (x + 0.9, c)], GREEN.mix(0.7).filled()))
        });
    chart
        .draw_series(checkouts)
        .map_err(plot_error)?
        .label("checkouts/s")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], GREEN.mix(0.7).filled()));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// The bar's name under the middle of its slot, nothing elsewhere.
fn label_at(names: &[String], x: f64) -> String {
    let slot = x.floor();
    if (x - slot - 0.5).abs() < 0.01 && slot >= 0.0 {
        names.get(slot as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn latency(area: &Area<'_>, report: &Report) -> anyhow::Result<()> {
    let mut lines: Vec<(String, Percentiles)> = report
        .flows
        .iter()
        .map(|f| (f.flow.clone(), f.hold_latency_ms))
        .collect();
    lines.extend(
        report
            .references
            .iter()
            .map(|r| (r.name.clone(), r.hold_latency_ms)),
    );
    let top = lines.iter().map(|(_, p)| p.max).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("holdTickets latency (ms)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2f64..3.2, (0.01f64..top * 2.0).log_scale())
        .map_err(plot_error)?;
    let ticks = ["p50", "p90", "p99", "max"];
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let index = x.round();
            let on_tick = (x - index).abs() < 0.01 && (0.0..4.0).contains(&index);
            if on_tick {
                ticks[index as usize].to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("ms (log)")
        .draw()
        .map_err(plot_error)?;
    for (index, (name, p)) in lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let points = [p.p50, p.p90, p.p99, p.max]
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as f64, v.max(0.01)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {error}")
}
