//! The help overlay: every key, generated from the keymap the app dispatches on.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use super::centered;
use crate::tui::keymap::help_lines;

/// Draws the help overlay.
pub fn draw(f: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    let mut section = "";
    for (sec, key, words) in help_lines() {
        if sec != section {
            lines.push(Line::styled(sec, Style::new().add_modifier(Modifier::BOLD)));
            section = sec;
        }
        lines.push(Line::from(vec![
            Span::raw(format!("  {key:<6} ")),
            Span::raw(words),
        ]));
    }
    // Two columns when the screen is short.
    let rows = area.height.saturating_sub(2) as usize;
    let r = centered(area, area.width.min(100), area.height);
    f.render_widget(Clear, r);
    let block = Block::bordered().title(" Help (? or Esc closes) ");
    let inner = block.inner(r);
    f.render_widget(block, r);
    if lines.len() <= rows || inner.width < 60 {
        f.render_widget(Paragraph::new(lines), inner);
    } else {
        let half = lines.len().div_ceil(2);
        let right = lines.split_off(half);
        let [a, b] = ratatui::layout::Layout::horizontal([
            ratatui::layout::Constraint::Percentage(50),
            ratatui::layout::Constraint::Percentage(50),
        ])
        .areas(inner);
        f.render_widget(Paragraph::new(lines), a);
        f.render_widget(Paragraph::new(right), b);
    }
}
