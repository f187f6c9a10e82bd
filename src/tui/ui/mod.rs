//! Drawing: one function per pane, all reading [`State`] and nothing else. The frame is a tab
//! bar, the pane, and a status line (the last message, or the pane's keys from the keymap);
//! prompts, questions and the help overlay draw on top.

mod bots;
mod generation;
mod help;
mod queue;
mod training;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Tabs, Wrap};
use ratatui::Frame;

use super::keymap::{hints, Pane};
use super::state::State;

/// Draws the whole screen.
pub fn draw(f: &mut Frame, s: &State) {
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_tabs(f, tabs, s);
    match s.pane {
        Pane::Bots => bots::draw(f, body, s),
        Pane::Training => training::draw(f, body, s),
        Pane::Generation => generation::draw(f, body, s),
        Pane::Queue => queue::draw(f, body, s),
    }
    draw_status(f, status, s);
    if let Some(input) = &s.input {
        draw_input(f, body, input);
    }
    if let Some(c) = &s.confirm {
        draw_confirm(f, body, c);
    }
    if s.help {
        help::draw(f, body);
    }
}

fn draw_tabs(f: &mut Frame, area: Rect, s: &State) {
    let titles = Pane::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {}", i + 1, p.title()));
    let selected = Pane::ALL.iter().position(|p| *p == s.pane).unwrap_or(0);
    let bot = s.bot().map(|b| b.name.as_str()).unwrap_or("-");
    let [left, right] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(22)]).areas(area);
    f.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .divider("|"),
        left,
    );
    let mut tail = vec![Span::raw(format!("bot: {bot}"))];
    if s.training_runs() {
        tail.push(Span::raw(" ●").fg(Color::Yellow));
    }
    f.render_widget(Line::from(tail).right_aligned(), right);
}

fn draw_status(f: &mut Frame, area: Rect, s: &State) {
    let line = if !s.status.is_empty() {
        let style = if s.status_is_error {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Line::styled(s.status.clone(), style)
    } else if let Some(b) = &s.busy {
        Line::raw(format!("{b}…"))
    } else {
        Line::styled(hints(s.pane), Style::new().add_modifier(Modifier::DIM))
    };
    f.render_widget(Paragraph::new(line), area);
}

/// A box of `w` x `h` cells in the middle of `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_input(f: &mut Frame, area: Rect, input: &super::state::Input) {
    let editor = input.limit.is_some();
    let h = if editor { 9 } else { 5 };
    let r = centered(area, area.width.saturating_sub(4).max(20), h);
    f.render_widget(Clear, r);
    // Tweets are counted as X counts them; other prompts have no limit.
    let count = crate::app::tweet_length(&input.text());
    let title = match input.limit {
        Some(l) => format!(" {} ({count}/{l}) ", input.prompt),
        None => format!(" {} ", input.prompt),
    };
    let over = input.limit.is_some_and(|l| count > l);
    let block = Block::bordered()
        .title(title)
        .title_bottom(" Enter ok · Esc cancel · Ctrl+←/→ word · Ctrl+Z undo ")
        .border_style(if over {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Cyan)
        });
    let inside = block.inner(r);
    f.render_widget(block, r);
    f.render_widget(&input.field, inside);
}

fn draw_confirm(f: &mut Frame, area: Rect, c: &super::state::Confirm) {
    use super::state::Confirm;
    let q = match c {
        Confirm::DeleteBot(b) => {
            format!("Delete bot `{b}` with its tweets, model, candidates and queue?")
        }
        Confirm::QuitWhileTraining => {
            "Fine-tuning runs. Stop it (saved, resumable) and quit?".to_string()
        }
        Confirm::Retrain(b) => format!(
            "`{b}` has a fine-tuned model. Fine-tune again from the base model, replacing it?"
        ),
    };
    let r = centered(area, 60, 6);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(vec![
            Line::raw(q),
            Line::raw(""),
            Line::raw("y yes · n no").bold(),
        ])
        .wrap(Wrap { trim: true })
        .block(
            Block::bordered()
                .title(" Confirm ")
                .border_style(Style::new().fg(Color::Yellow)),
        ),
        r,
    );
}

/// The whole text of the selected tweet, wrapped, with its length: rows show only its start.
pub fn preview(f: &mut Frame, area: Rect, title: &str, text: &str) {
    let n = crate::app::tweet_length(text);
    f.render_widget(
        Paragraph::new(text.to_string())
            .wrap(Wrap { trim: false })
            .block(
                Block::bordered()
                    .title(title.to_string())
                    .title_bottom(format!(" {n}/{} ", crate::app::MAX_TWEET_LENGTH)),
            ),
        area,
    );
}

/// "1m05s", "2h03m".
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The style of a selected row.
pub fn selected() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}
