//! The training pane: fine-tuning of the selected bot with epoch and overall progress, a chart
//! of training and validation loss against steps, speed, ETA and device.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Chart, Dataset, Gauge, GraphType, Paragraph, Wrap};
use ratatui::Frame;

use super::fmt_secs;
use crate::tui::state::{State, TrainingView};

/// Draws the training pane.
pub fn draw(f: &mut Frame, area: Rect, s: &State) {
    let Some(bot) = s.bot() else {
        f.render_widget(
            Paragraph::new("No bot selected.").block(Block::bordered().title(" Training ")),
            area,
        );
        return;
    };
    let block = Block::bordered().title(format!(" Training: {} ", bot.name));
    let t = s.training.as_ref().filter(|t| t.bot == bot.name);
    let Some(t) = t else {
        let model = if bot.fine_tuned {
            format!(
                "fine-tuned (best validation loss {} nats/char)",
                bot.best_val_loss
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or("-".into())
            )
        } else {
            "the base model (not fine-tuned yet)".into()
        };
        let what = if bot.resumable {
            "Press t to resume the stopped fine-tune."
        } else if bot.fine_tuned {
            "Press t to fine-tune again from the base model."
        } else {
            "Press t to fine-tune it on its tweets (a few minutes on a laptop CPU)."
        };
        let busy = s
            .training
            .as_ref()
            .filter(|o| o.running)
            .map(|o| {
                format!(
                    "\n\n{} is training now; one fine-tune runs at a time.",
                    o.bot
                )
            })
            .unwrap_or_default();
        f.render_widget(
            Paragraph::new(format!(
                "{} tweets kept. Generates with {model}.\n\n{what}{busy}",
                bot.kept
            ))
            .wrap(Wrap { trim: false })
            .block(block),
            area,
        );
        return;
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [head, epoch, overall, charts, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .spacing(0)
    .areas(inner);
    f.render_widget(Paragraph::new(head_line(t)), head);
    let spe = t.steps_per_epoch.max(1);
    let in_epoch = if t.step >= t.total_steps && t.total_steps > 0 {
        1.0
    } else {
        (t.batch_in_epoch as f64 / spe as f64).min(1.0)
    };
    f.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(Color::Cyan))
            .ratio(in_epoch)
            .label(format!(
                "epoch {}  {}/{spe}",
                t.epoch + 1,
                t.batch_in_epoch.min(spe)
            )),
        epoch,
    );
    let all = (t.step as f64 / t.total_steps.max(1) as f64).min(1.0);
    f.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(Color::Green))
            .ratio(all)
            .label(format!("overall  {}/{} steps", t.step, t.total_steps)),
        overall,
    );
    loss_chart(f, charts, t);
    f.render_widget(Paragraph::new(foot_line(t)), foot);
}

fn head_line(t: &TrainingView) -> Line<'static> {
    let state = match (&t.outcome, t.running, t.stopping) {
        (Some(o), _, _) => o.clone(),
        (None, true, true) => "stopping after this step…".into(),
        (None, true, false) if t.start_step > 0 => format!("resumed at step {}", t.start_step),
        (None, true, false) => "fine-tuning".into(),
        (None, false, _) => "stopped".into(),
    };
    Line::raw(format!("{state} on {}", t.device))
}

fn foot_line(t: &TrainingView) -> Line<'static> {
    let mut s = format!("{:.0} chars/s", t.chars_per_s);
    if t.running {
        s.push_str(&format!("  ETA {}", fmt_secs(t.eta_s)));
        s.push_str("   s stop");
    } else {
        s.push_str("   t resume/restart · 3 generate");
    }
    Line::raw(s)
}

/// Training loss (moving average) and validation loss against steps, with both axes labelled:
/// x from the run's first step to its last, y over the losses shown, in nats per character.
fn loss_chart(f: &mut Frame, area: Rect, t: &TrainingView) {
    let last = |v: &[(f64, f64)]| v.last().map(|p| p.1);
    let title = match (last(&t.losses), last(&t.val_losses), t.best_val) {
        (Some(l), Some(v), Some(b)) => {
            format!(" loss {l:.3} · validation {v:.3} (best {b:.3}) · nats/char ")
        }
        (Some(l), ..) => format!(" loss {l:.3} · validation - · nats/char "),
        _ => " loss · nats/char ".to_string(),
    };
    let points = t.losses.iter().chain(&t.val_losses);
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    // Round the y range out to tenths so the labels read as plain numbers.
    let (lo, hi) = if lo.is_finite() {
        (
            (lo * 10.0).floor() / 10.0,
            ((hi * 10.0).ceil() / 10.0).max(lo + 0.1),
        )
    } else {
        (0.0, 1.0)
    };
    let first = t.losses.first().map_or(t.start_step as f64, |p| p.0);
    let end = (t.total_steps as f64).max(t.step as f64).max(first + 1.0);
    let line = |name: &'static str, color: Color, data| {
        Dataset::default()
            .name(name)
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(color))
            .data(data)
    };
    let datasets = vec![
        line("training", Color::Yellow, &t.losses),
        line("validation", Color::Magenta, &t.val_losses),
    ];
    let label = |v: f64| format!("{v:.0}");
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(title))
        .x_axis(Axis::default().title("step").bounds([first, end]).labels([
            label(first),
            label((first + end) / 2.0),
            label(end),
        ]))
        .y_axis(Axis::default().bounds([lo, hi]).labels([
            format!("{lo:.1}"),
            format!("{:.2}", (lo + hi) / 2.0),
            format!("{hi:.1}"),
        ]));
    f.render_widget(chart, area);
}
