//! The queue pane: the selected bot's queue with planned times and status, and where its
//! posts go.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::selected;
use crate::app::QueueStatus;
use crate::tui::state::State;

/// Draws the queue pane.
pub fn draw(f: &mut Frame, area: Rect, s: &State) {
    let name = s.bot().map(|b| b.name.as_str()).unwrap_or("-");
    let [info, log, list, preview] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(6),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(Line::raw(format!(" {}", s.posting_line))),
        info,
    );
    let last = s.scheduler_log.as_deref().unwrap_or("(nothing logged yet)");
    f.render_widget(
        Paragraph::new(Line::raw(format!(" scheduler log: {last}")))
            .style(Style::new().add_modifier(Modifier::DIM)),
        log,
    );
    let block = Block::bordered().title(format!(" Queue: {name} "));
    if s.queue.is_empty() {
        f.render_widget(
            Paragraph::new(
                "Nothing queued. Approve candidates in the generation pane (3, then a).",
            )
            .block(block),
            list,
        );
        return;
    }
    let rows = s.queue.iter().map(|e| {
        let when = match e.status {
            QueueStatus::Posted => e.posted_at.clone(),
            QueueStatus::Sending => e.sending_since.clone(),
            _ => e.planned_at.clone(),
        }
        .map(|t| {
            t.replace('T', " ")
                .trim_end_matches('Z')
                .chars()
                .skip(5)
                .take(11)
                .collect()
        })
        .unwrap_or_else(|| "-".to_string());
        let (status, style) = match e.status {
            QueueStatus::Queued => ("queued".to_string(), Style::new()),
            QueueStatus::Sending => ("sending".into(), Style::new().fg(Color::Yellow)),
            QueueStatus::Posted => ("posted".into(), Style::new().fg(Color::Green)),
            QueueStatus::Failed => ("failed".into(), Style::new().fg(Color::Red)),
        };
        let mut text = e.text.replace('\n', " ");
        if let (QueueStatus::Failed, Some(err)) = (e.status, &e.error) {
            text = format!("{err} — {text}");
        }
        Row::new(vec![e.id.to_string(), status, when, text]).style(style)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(["#", "Status", "When (UTC)", "Text"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .highlight_symbol("> ")
    .block(block.title_bottom(" K/J move · r remove · P post now · S scheduler "));
    let mut st = TableState::default().with_selected(Some(s.queue_sel));
    f.render_stateful_widget(table, list, &mut st);
    if let Some(e) = s.queue_entry() {
        super::preview(f, preview, &format!(" #{} {} ", e.id, e.status), &e.text);
    }
}
