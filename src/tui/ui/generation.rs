//! The generation pane: the selected bot's candidates, best score first, with status, score,
//! length and novelty, and the sampling settings.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::selected;
use crate::tui::state::State;

/// Draws the generation pane.
pub fn draw(f: &mut Frame, area: Rect, s: &State) {
    let name = s.bot().map(|b| b.name.as_str()).unwrap_or("-");
    let [settings, list, preview] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(6),
    ])
    .areas(area);
    let prime = if s.prime.is_empty() {
        "none".to_string()
    } else {
        format!("\"{}\"", s.prime)
    };
    let mut line = format!(" temperature {:.2} · prime {prime}", s.temperature);
    if s.generating {
        line.push_str(" · generating…");
    }
    f.render_widget(Paragraph::new(Line::raw(line)), settings);
    let block = Block::bordered().title(format!(" Candidates: {name} "));
    if s.candidates.is_empty() {
        f.render_widget(
            Paragraph::new("No candidates yet. Press g to generate some.").block(block),
            list,
        );
        return;
    }
    let rows = s.candidates.iter().map(|c| {
        let text = c.edited_text.as_deref().unwrap_or(&c.text);
        let style = match c.status.as_str() {
            "approved" | "edited" => Style::new().fg(Color::Green),
            "rejected" => Style::new().add_modifier(Modifier::DIM),
            _ => Style::new(),
        };
        Row::new(vec![
            c.id.to_string(),
            c.status.clone(),
            c.score.map(|n| format!("{n:.2}")).unwrap_or("-".into()),
            text.chars().count().to_string(),
            c.novelty.map(|n| format!("{n:.2}")).unwrap_or("-".into()),
            text.replace('\n', " "),
        ])
        .style(style)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(5),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(["#", "Status", "Score", "Len", "Nov.", "Text"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .highlight_symbol("> ")
    .block(block.title_bottom(" a approve · x reject · e edit · u undo · g more "));
    let mut st = TableState::default().with_selected(Some(s.cand_sel));
    f.render_stateful_widget(table, list, &mut st);
    if let Some(c) = s.candidate() {
        let text = c.edited_text.as_deref().unwrap_or(&c.text);
        super::preview(f, preview, &format!(" #{} ", c.id), text);
    }
}
