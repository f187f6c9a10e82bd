//! The training pane: fine-tuning of the selected bot with epoch and overall progress, loss
//! and validation-loss sparklines, speed, ETA and device.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Gauge, Paragraph, Sparkline, Wrap};
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
    let [loss_area, val_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(charts);
    let last = t
        .losses
        .last()
        .map(|l| format!("{l:.3}"))
        .unwrap_or("-".into());
    spark(
        f,
        loss_area,
        &format!(" loss {last} "),
        &t.losses,
        Color::Yellow,
    );
    let val = match (t.val_losses.last(), t.best_val) {
        (Some(v), Some(b)) => format!(" val {v:.3} (best {b:.3}) "),
        _ => " val - ".into(),
    };
    spark(f, val_area, &val, &t.val_losses, Color::Magenta);
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

/// A sparkline of `values` scaled between their min and max, newest at the right.
fn spark(f: &mut Frame, area: Rect, title: &str, values: &[f64], color: Color) {
    let block = Block::bordered().title(title.to_string());
    let width = block.inner(area).width as usize;
    let shown = &values[values.len().saturating_sub(width)..];
    let (lo, hi) = shown
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let span = (hi - lo).max(1e-9);
    // Lower is better: bars stand for loss above the window's minimum, plus a floor so the
    // lowest point still shows.
    let data: Vec<u64> = shown
        .iter()
        .map(|v| 1 + ((v - lo) / span * 99.0) as u64)
        .collect();
    f.render_widget(
        Sparkline::default()
            .block(block)
            .data(&data)
            .max(100)
            .style(Style::new().fg(color)),
        area,
    );
}
