//! What the screen shows, as plain data: the draw functions read it, the event handlers
//! change it, and tests build it by hand to snapshot each pane.

use crate::app::overview::BotOverview;
use crate::app::{CandidateRow, QueueRow, TrainEvent};

use ratatui::style::Style;
use ratatui_textarea::{CursorMove, TextArea, WrapMode};

use super::keymap::Pane;

/// Progress of a fine-tune, from the engine's events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingView {
    /// The bot being trained.
    pub bot: String,
    /// Whether it still runs.
    pub running: bool,
    /// Whether a stop was asked for.
    pub stopping: bool,
    /// Step the run started (or resumed) at.
    pub start_step: u64,
    /// Steps done.
    pub step: u64,
    /// Steps in all.
    pub total_steps: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Epoch (0-based).
    pub epoch: u64,
    /// Batches done in this epoch.
    pub batch_in_epoch: u64,
    /// Training loss as (step, moving average), oldest first; thinned to every other point
    /// when long, so the chart always spans the whole run.
    pub losses: Vec<(f64, f64)>,
    /// Validation losses as (step, loss), oldest first.
    pub val_losses: Vec<(f64, f64)>,
    /// Best validation loss.
    pub best_val: Option<f64>,
    /// Characters per second.
    pub chars_per_s: f64,
    /// Seconds left.
    pub eta_s: f64,
    /// What it runs on ("cpu (4 threads)", "cuda:0").
    pub device: String,
    /// How it ended, once it has.
    pub outcome: Option<String>,
}

impl TrainingView {
    /// Takes in one of the engine's progress events.
    pub fn apply(&mut self, ev: TrainEvent) {
        match ev {
            TrainEvent::Started {
                steps_per_epoch,
                total_steps,
                start_step,
                device,
                ..
            } => {
                self.steps_per_epoch = steps_per_epoch;
                self.total_steps = total_steps;
                self.start_step = start_step;
                self.step = start_step;
                self.device = device;
            }
            TrainEvent::Step {
                step,
                epoch,
                batch_in_epoch,
                loss,
                chars_per_s,
                eta_s,
            } => {
                self.step = step;
                self.epoch = epoch;
                self.batch_in_epoch = batch_in_epoch;
                // Per-batch losses are noisy: the chart shows a moving average.
                let smooth = self.losses.last().map_or(loss, |p| 0.9 * p.1 + 0.1 * loss);
                self.losses.push((step as f64, smooth));
                if self.losses.len() > 4000 {
                    let mut k = 0;
                    self.losses.retain(|_| {
                        k += 1;
                        k % 2 == 1
                    });
                }
                self.chars_per_s = chars_per_s;
                self.eta_s = eta_s;
            }
            TrainEvent::Validated {
                step,
                val_loss,
                best_val_loss,
                ..
            } => {
                self.val_losses.push((step as f64, val_loss));
                self.best_val = Some(best_val_loss);
            }
            TrainEvent::Finished { .. } => {}
        }
    }
}

/// A text being typed: a prompt, or the candidate editor.
#[derive(Clone, Debug)]
pub struct Input {
    /// What it is for.
    pub purpose: InputPurpose,
    /// The question shown.
    pub prompt: String,
    /// The text field (ratatui-textarea): cursor keys, word jumps (Ctrl+arrows), delete
    /// forward, undo and redo (Ctrl+U / Ctrl+R, and Ctrl+Z), soft wrapping.
    pub field: TextArea<'static>,
    /// Longest text allowed, in X's weighted length (the editor's 280).
    pub limit: Option<usize>,
}

impl Input {
    /// A field holding `text` with the cursor at its end.
    pub fn new(
        purpose: InputPurpose,
        prompt: impl Into<String>,
        text: &str,
        limit: Option<usize>,
    ) -> Self {
        let mut field = TextArea::new(text.split('\n').map(String::from).collect());
        field.move_cursor(CursorMove::Bottom);
        field.move_cursor(CursorMove::End);
        field.set_wrap_mode(WrapMode::WordOrGlyph);
        field.set_cursor_line_style(Style::default());
        Self {
            purpose,
            prompt: prompt.into(),
            field,
            limit,
        }
    }

    /// The text typed so far.
    pub fn text(&self) -> String {
        self.field.lines().join("\n")
    }
}

/// Two inputs are the same when they ask the same and hold the same text at the same cursor.
impl PartialEq for Input {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.purpose,
            &self.prompt,
            self.field.lines(),
            self.field.cursor(),
            self.limit,
        ) == (
            &other.purpose,
            &other.prompt,
            other.field.lines(),
            other.field.cursor(),
            other.limit,
        )
    }
}

/// What a finished input does.
#[derive(Clone, Debug, PartialEq)]
pub enum InputPurpose {
    /// The new bot's name.
    NewBotName,
    /// Where the new bot's tweets come from.
    NewBotSource(String),
    /// More tweets for the selected bot.
    ImportSource,
    /// The priming text.
    Prime,
    /// The new text of candidate `id`.
    EditCandidate(i64),
}

/// A yes/no question.
#[derive(Clone, Debug, PartialEq)]
pub enum Confirm {
    /// Delete this bot.
    DeleteBot(String),
    /// Quit while training runs.
    QuitWhileTraining,
    /// Fine-tune again from the base model, replacing the bot's model.
    Retrain(String),
}

/// Everything on screen.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// The pane shown.
    pub pane: Pane,
    /// Every bot.
    pub bots: Vec<BotOverview>,
    /// The selected bot's index.
    pub bot_sel: usize,
    /// Fine-tuning, if one ran in this session.
    pub training: Option<TrainingView>,
    /// The selected bot's candidates, best score first.
    pub candidates: Vec<CandidateRow>,
    /// The selected candidate's index.
    pub cand_sel: usize,
    /// Whether a generation runs.
    pub generating: bool,
    /// Sampling temperature.
    pub temperature: f64,
    /// Priming text.
    pub prime: String,
    /// The selected bot's queue.
    pub queue: Vec<QueueRow>,
    /// The scheduler service's last log line.
    pub scheduler_log: Option<String>,
    /// The selected queue entry's index.
    pub queue_sel: usize,
    /// Where the selected bot's posts go, and how the scheduler runs.
    pub posting_line: String,
    /// The help overlay is shown.
    pub help: bool,
    /// Text being typed.
    pub input: Option<Input>,
    /// A question waiting for y/n.
    pub confirm: Option<Confirm>,
    /// The last message (errors in words).
    pub status: String,
    /// Whether the status is an error.
    pub status_is_error: bool,
    /// Work running in the background, in words ("importing…").
    pub busy: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            pane: Pane::Bots,
            bots: Vec::new(),
            bot_sel: 0,
            training: None,
            candidates: Vec::new(),
            cand_sel: 0,
            generating: false,
            temperature: 0.8,
            prime: String::new(),
            queue: Vec::new(),
            scheduler_log: None,
            queue_sel: 0,
            posting_line: String::new(),
            help: false,
            input: None,
            confirm: None,
            status: String::new(),
            status_is_error: false,
            busy: None,
        }
    }
}

impl State {
    /// The selected bot.
    pub fn bot(&self) -> Option<&BotOverview> {
        self.bots.get(self.bot_sel)
    }

    /// The selected candidate.
    pub fn candidate(&self) -> Option<&CandidateRow> {
        self.candidates.get(self.cand_sel)
    }

    /// The selected queue entry.
    pub fn queue_entry(&self) -> Option<&QueueRow> {
        self.queue.get(self.queue_sel)
    }

    /// Whether fine-tuning runs now.
    pub fn training_runs(&self) -> bool {
        self.training.as_ref().is_some_and(|t| t.running)
    }

    /// Shows a message.
    pub fn say(&mut self, msg: impl Into<String>) {
        self.status = msg.into();
        self.status_is_error = false;
    }

    /// Shows an error, in words, on one line.
    pub fn error(&mut self, msg: impl std::fmt::Display) {
        self.status = msg
            .to_string()
            .replace("\nHINT: ", " — ")
            .replace('\n', " ");
        self.status_is_error = true;
    }

    /// Keeps the selections inside their lists.
    pub fn clamp(&mut self) {
        let fix = |sel: &mut usize, len: usize| *sel = (*sel).min(len.saturating_sub(1));
        fix(&mut self.bot_sel, self.bots.len());
        fix(&mut self.cand_sel, self.candidates.len());
        fix(&mut self.queue_sel, self.queue.len());
    }
}
