//! The bots pane: every bot with its handle, tweets kept, model state, best validation loss,
//! queue length and next post.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::selected;
use crate::app::posting::Mode;
use crate::tui::state::State;

/// Draws the bots pane.
pub fn draw(f: &mut Frame, area: Rect, s: &State) {
    let block = Block::bordered().title(" Bots ");
    if s.bots.is_empty() {
        f.render_widget(
            Paragraph::new(
                "No bots yet. Press n to create one from an archive, a file or @handle.",
            )
            .block(block),
            area,
        );
        return;
    }
    let training = s.training.as_ref().filter(|t| t.running);
    let rows = s.bots.iter().map(|b| {
        let model = match training {
            Some(t) if t.bot == b.name => format!(
                "training {}%",
                (100 * t.step).checked_div(t.total_steps).unwrap_or(0)
            ),
            _ if b.resumable => "stopped".into(),
            _ if b.fine_tuned => "fine-tuned".into(),
            _ => "base".into(),
        };
        let next = match (&b.next_post, &b.mode) {
            (Some(t), Mode::Live) => t.format("%m-%d %H:%M").to_string(),
            (Some(t), Mode::DryRun(_)) => t.format("%m-%d %H:%M*").to_string(),
            (None, _) => "-".into(),
        };
        Row::new(vec![
            b.name.clone(),
            b.handle
                .as_ref()
                .map(|h| format!("@{h}"))
                .unwrap_or_default(),
            b.kept.to_string(),
            model,
            b.best_val_loss
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into()),
            b.queued.to_string(),
            next,
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(8),
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new([
            "Bot",
            "Handle",
            "Tweets",
            "Model",
            "Val loss",
            "Queue",
            "Next post",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .highlight_symbol("> ")
    .block(block.title_bottom(" * dry run (no credentials) · times UTC "));
    let mut st = TableState::default().with_selected(Some(s.bot_sel));
    f.render_stateful_widget(table, area, &mut st);
}
