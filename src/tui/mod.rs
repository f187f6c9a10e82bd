//! The terminal UI (`aviary` with no subcommand): bots, training, generation and queue panes
//! over the same `app` operations the CLI calls. [`App`] owns the state and turns keys and
//! job events into `app` calls and state changes; `ui` draws the state; slow work runs in
//! `app::jobs` threads. The terminal is restored on exit, on error and on panic.

pub mod keymap;
pub mod state;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::app::candidates::{self as cands, Review};
use crate::app::posting;
use crate::app::{self, overview, Session};
use crate::Result;

use crate::app::jobs::{self, AppEvent};
use keymap::{Action, Pane};
use state::{Confirm, Input, InputPurpose, State, TrainingView};

/// Temperature steps of `+` and `-`.
const TEMPERATURE_STEP: f64 = 0.1;

/// The TUI's state and the connections it works through.
pub struct App {
    /// What is on screen.
    pub state: State,
    session: Session,
    tx: Sender<AppEvent>,
    rx: Receiver<AppEvent>,
    cancel: Arc<AtomicBool>,
    /// Reviews to undo: candidate id and the review that restores it.
    undo: Vec<(i64, Review)>,
    quit_after_training: bool,
    /// Set when the app should end.
    pub quit: bool,
    /// Statements the store has run (what a refresh costs; `--debug` logs it).
    statements: Arc<std::sync::atomic::AtomicU64>,
}

impl App {
    /// Opens the session's home (creating the sample bot on first launch) and loads the state.
    pub fn new(mut session: Session) -> Result<App> {
        let first = overview::first_launch(session.home(), session.config())?;
        let statements = session.store()?.count_statements()?;
        let (tx, rx) = mpsc::channel();
        let mut app = App {
            state: State::default(),
            session,
            tx,
            rx,
            cancel: Arc::new(AtomicBool::new(false)),
            undo: Vec::new(),
            quit_after_training: false,
            quit: false,
            statements,
        };
        app.state.temperature = app.session.config().generate.temperature;
        app.refresh()?;
        if first {
            let kept = app.state.bot().map_or(0, |b| b.kept);
            app.state.say(format!(
                "Welcome! `{}` is a sample bot with {kept} tweets: Enter opens it, t fine-tunes it, ? shows every key.",
                overview::SAMPLE_BOT
            ));
        }
        Ok(app)
    }

    /// SQL statements the app's store connection has run so far.
    pub fn store_statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Reloads bots, and the selected bot's candidates and queue, from the store: one read of
    /// each table, however many bots there are.
    pub fn refresh(&mut self) -> Result<()> {
        let before = self.store_statements();
        let (bots, mut queues): (Vec<_>, Vec<_>) = self.session.overview()?.into_iter().unzip();
        self.state.bots = bots;
        self.state.clamp();
        let Some(bot) = self.state.bot().cloned() else {
            self.state.candidates.clear();
            self.state.queue.clear();
            self.state.posting_line.clear();
            return Ok(());
        };
        self.state.candidates = cands::list(self.session.store()?, &bot.name, None)?;
        // The selected bot's queue, from the same read as the bots list.
        let q = queues.swap_remove(self.state.bot_sel);
        let service = app::service::status(self.session.home(), 1)?;
        let scheduler = if service.running {
            "scheduler running (S stops it)"
        } else {
            "scheduler not running: S starts it"
        };
        self.state.scheduler_log = service.log_tail.into_iter().next();
        let next = q
            .planned
            .first()
            .filter(|_| q.enabled)
            .map(|t| format!(" · next post {}", t.format("%m-%d %H:%M UTC")))
            .unwrap_or_default();
        self.state.posting_line = format!(
            "{} · schedule {}{next} · {} posts/day ≈ ${:.2}/day · {scheduler}",
            q.mode,
            if q.enabled { "on" } else { "off" },
            q.posts_per_day,
            q.cost_per_day
        );
        // Each queued entry's time from the scheduler's own plan, in queue order.
        let mut planned = q.planned.iter();
        self.state.queue = q
            .entries
            .into_iter()
            .map(|mut e| {
                if e.status == app::QueueStatus::Queued {
                    e.planned_at = planned.next().map(|t| posting::stamp(*t));
                }
                e
            })
            .collect();
        self.state.clamp();
        tracing::debug!(
            "refresh: {} store statements",
            self.store_statements() - before
        );
        Ok(())
    }

    /// Runs `f`, showing its error in the status line instead of failing.
    fn attempt(&mut self, f: impl FnOnce(&mut App) -> Result<()>) {
        if let Err(e) = f(self) {
            self.state.error(e);
        }
        if let Err(e) = self.refresh() {
            self.state.error(e);
        }
    }

    /// Handles one key.
    pub fn on_key(&mut self, k: KeyEvent) {
        if k.kind == KeyEventKind::Release {
            return;
        }
        if self.state.input.is_some() {
            return self.on_input_key(k);
        }
        if let Some(c) = self.state.confirm.clone() {
            return self.on_confirm_key(k, c);
        }
        if self.state.help {
            if matches!(
                k.code,
                KeyCode::Char('?') | KeyCode::Esc | KeyCode::Char('q')
            ) {
                self.state.help = false;
            }
            return;
        }
        if k.code == KeyCode::Esc {
            self.state.status.clear();
            return;
        }
        let Some(action) = keymap::lookup(self.state.pane, &k) else {
            return;
        };
        self.state.status.clear();
        self.act(action);
    }

    /// Does what a key's action says, by the part of the app it concerns.
    fn act(&mut self, action: Action) {
        use Action::*;
        match action {
            Quit | Help | NextPane | PrevPane | GoTo(_) | Down | Up | Open => self.navigate(action),
            NewBot | Import | DeleteBot => self.act_on_bots(action),
            StartTraining => self.start_training(false),
            StopTraining => self.stop_training(),
            Generate | Hotter | Colder | Prime | Approve | Reject | Edit | Undo => {
                self.act_on_candidates(action)
            }
            MoveUp | MoveDown | Remove | ToggleScheduler | PostNow => self.act_on_queue(action),
        }
    }

    /// Asks to stop the running fine-tune (it stops after its current step, saved).
    fn stop_training(&mut self) {
        let s = &mut self.state;
        match s.training.as_mut().filter(|t| t.running) {
            Some(t) => {
                self.cancel.store(true, Ordering::SeqCst);
                t.stopping = true;
            }
            None => s.say("nothing is training"),
        }
    }

    /// Quitting, help, panes and the selection.
    fn navigate(&mut self, action: Action) {
        let s = &mut self.state;
        let bot = s.bot().map(|b| b.name.clone());
        match action {
            Action::Quit => {
                if s.training_runs() {
                    s.confirm = Some(Confirm::QuitWhileTraining);
                } else {
                    self.quit = true;
                }
            }
            Action::Help => s.help = true,
            Action::NextPane | Action::PrevPane => {
                let i = Pane::ALL.iter().position(|p| *p == s.pane).unwrap_or(0);
                let n = Pane::ALL.len();
                let j = if action == Action::NextPane {
                    i + 1
                } else {
                    i + n - 1
                } % n;
                s.pane = Pane::ALL[j];
            }
            Action::GoTo(p) => s.pane = p,
            Action::Down | Action::Up => {
                let down = action == Action::Down;
                let (sel, len) = match s.pane {
                    Pane::Bots | Pane::Training => (&mut s.bot_sel, s.bots.len()),
                    Pane::Generation => (&mut s.cand_sel, s.candidates.len()),
                    Pane::Queue => (&mut s.queue_sel, s.queue.len()),
                };
                *sel = if down {
                    (*sel + 1).min(len.saturating_sub(1))
                } else {
                    sel.saturating_sub(1)
                };
                if matches!(s.pane, Pane::Bots | Pane::Training) {
                    s.cand_sel = 0;
                    s.queue_sel = 0;
                    self.undo.clear();
                    self.attempt(|_| Ok(()));
                }
            }
            Action::Open if bot.is_some() => s.pane = Pane::Training,
            _ => {}
        }
    }

    /// The Bots pane: new bot, import, delete.
    fn act_on_bots(&mut self, action: Action) {
        let s = &mut self.state;
        let bot = s.bot().map(|b| b.name.clone());
        match action {
            Action::NewBot => {
                s.input = Some(Input::new(
                    InputPurpose::NewBotName,
                    "New bot's name",
                    "",
                    None,
                ))
            }
            Action::Import => {
                if let Some(b) = bot {
                    s.input = Some(Input::new(
                        InputPurpose::ImportSource,
                        format!("Tweets for {b}: a file, archive or @handle to fetch"),
                        "",
                        None,
                    ))
                }
            }
            Action::DeleteBot => {
                if let Some(b) = bot {
                    if s.training.as_ref().is_some_and(|t| t.running && t.bot == b) {
                        s.error("stop its fine-tuning first (2, then s)");
                    } else {
                        s.confirm = Some(Confirm::DeleteBot(b));
                    }
                }
            }
            _ => {}
        }
    }

    /// The Generation pane: generate, sampling settings, review, undo.
    fn act_on_candidates(&mut self, action: Action) {
        let s = &mut self.state;
        let bot = s.bot().map(|b| b.name.clone());
        match action {
            Action::Generate => {
                let Some(b) = bot else { return };
                if s.generating {
                    return s.say("already generating");
                }
                s.generating = true;
                jobs::generate(
                    self.session.for_job(),
                    b,
                    s.temperature,
                    s.prime.clone(),
                    self.tx.clone(),
                );
            }
            Action::Hotter | Action::Colder => {
                let d = if action == Action::Hotter {
                    TEMPERATURE_STEP
                } else {
                    -TEMPERATURE_STEP
                };
                s.temperature = ((s.temperature + d) * 10.0).round().clamp(0.0, 20.0) / 10.0;
            }
            Action::Prime => {
                s.input = Some(Input::new(
                    InputPurpose::Prime,
                    "Every candidate starts with",
                    &s.prime,
                    None,
                ))
            }
            Action::Approve | Action::Reject => {
                let r = if action == Action::Approve {
                    Review::Approve
                } else {
                    Review::Reject
                };
                self.review(r);
            }
            Action::Edit => {
                if let Some(c) = s.candidate() {
                    s.input = Some(Input::new(
                        InputPurpose::EditCandidate(c.id),
                        format!("Edit #{}", c.id),
                        c.edited_text.as_deref().unwrap_or(&c.text),
                        Some(crate::app::MAX_TWEET_LENGTH),
                    ))
                }
            }
            Action::Undo => match (self.undo.pop(), bot) {
                (Some((id, r)), Some(b)) => self.attempt(|a| {
                    cands::review(a.session.store()?, &b, &[id], &r)?;
                    a.state.say(format!("undone: #{id} is back as it was"));
                    Ok(())
                }),
                _ => s.say("nothing to undo"),
            },
            _ => {}
        }
    }

    /// The Queue pane: order, remove, post now, the scheduler service.
    fn act_on_queue(&mut self, action: Action) {
        let s = &mut self.state;
        match action {
            Action::MoveUp | Action::MoveDown => {
                let Some(e) = s.queue_entry().cloned() else {
                    return;
                };
                let queued: Vec<i64> = s
                    .queue
                    .iter()
                    .filter(|q| q.status == app::QueueStatus::Queued)
                    .map(|q| q.id)
                    .collect();
                let Some(place) = queued.iter().position(|i| *i == e.id) else {
                    return s.error("only queued entries move");
                };
                let to = if action == Action::MoveUp {
                    place.max(1)
                } else {
                    place + 2
                };
                self.attempt(|a| {
                    posting::move_to(a.session.store()?, e.id, to)?;
                    Ok(())
                });
                if let Some(i) = self.state.queue.iter().position(|q| q.id == e.id) {
                    self.state.queue_sel = i;
                }
            }
            Action::Remove => {
                let Some(e) = s.queue_entry().cloned() else {
                    return;
                };
                self.attempt(|a| {
                    posting::remove(a.session.store()?, e.id)?;
                    a.state.say(format!("removed #{} from the queue", e.id));
                    Ok(())
                });
            }
            Action::ToggleScheduler => self.attempt(|a| {
                use app::service;
                let home = a.session.home();
                if service::status(home, 0)?.running {
                    service::stop(home, Duration::from_secs(120))?;
                    a.state.say("scheduler stopped");
                } else {
                    let launch = service::Launch::current(a.session.config_path(), home)?;
                    let st = service::start(home, &launch)?;
                    let pid = st.pid.map_or(0, |p| p.0);
                    a.state.say(format!(
                        "scheduler started (process {pid}): it runs on when aviary quits; S stops it"
                    ));
                }
                Ok(())
            }),
            Action::PostNow => {
                let Some(e) = s.queue_entry().cloned() else {
                    return;
                };
                s.busy = Some(format!("posting #{}", e.id));
                jobs::post_now(
                    self.session.for_job(),
                    e.id,
                    self.tx.clone(),
                );
            }
            _ => {}
        }
    }

    fn review(&mut self, r: Review) {
        let Some(bot) = self.state.bot().map(|b| b.name.clone()) else {
            return;
        };
        let Some(c) = self.state.candidate().cloned() else {
            return;
        };
        let back = match c.status.as_str() {
            "approved" => Review::Approve,
            "rejected" => Review::Reject,
            "edited" => Review::Edit(c.edited_text.clone().unwrap_or(c.text.clone())),
            _ => Review::Reset,
        };
        self.attempt(|a| {
            cands::review(a.session.store()?, &bot, &[c.id], &r)?;
            a.undo.push((c.id, back));
            let what = match r {
                Review::Approve => "approved and queued",
                Review::Reject => "rejected",
                Review::Edit(_) => "edited and queued",
                Review::Reset => "reset",
            };
            a.state.say(format!("#{} {what} (u undoes)", c.id));
            // On to the next one to review.
            a.state.cand_sel += 1;
            Ok(())
        });
    }

    fn start_training(&mut self, confirmed: bool) {
        let s = &mut self.state;
        let Some(b) = s.bot().cloned() else { return };
        if let Some(t) = s.training.as_ref().filter(|t| t.running) {
            return s.say(format!(
                "{} is training; one fine-tune runs at a time",
                t.bot
            ));
        }
        if b.fine_tuned && !b.resumable && !confirmed {
            s.confirm = Some(Confirm::Retrain(b.name));
            return;
        }
        if b.kept == 0 {
            return s.error(format!(
                "{} has no tweets to fine-tune on — press 1, then i, to import some",
                b.name
            ));
        }
        self.cancel.store(false, Ordering::SeqCst);
        s.training = Some(TrainingView {
            bot: b.name.clone(),
            running: true,
            device: "…".into(),
            ..TrainingView::default()
        });
        s.pane = Pane::Training;
        s.say(if b.resumable {
            format!("resuming the fine-tune of {}", b.name)
        } else {
            format!("fine-tuning {} from the base model", b.name)
        });
        jobs::train(
            self.session.for_job(),
            b.name,
            b.resumable,
            self.cancel.clone(),
            self.tx.clone(),
        );
    }

    fn on_confirm_key(&mut self, k: KeyEvent, c: Confirm) {
        match k.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                self.state.confirm = None;
                match c {
                    Confirm::DeleteBot(b) => self.attempt(|a| {
                        let p = a.session.parts()?;
                        app::bots::remove_bot(p.home, p.store, &b)?;
                        a.state.say(format!("deleted {b}"));
                        Ok(())
                    }),
                    Confirm::QuitWhileTraining => {
                        self.cancel.store(true, Ordering::SeqCst);
                        if let Some(t) = self.state.training.as_mut() {
                            t.stopping = true;
                        }
                        self.quit_after_training = true;
                        self.state
                            .say("stopping the fine-tune (saved, resumable), then quitting…");
                    }
                    Confirm::Retrain(_) => self.start_training(true),
                }
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => self.state.confirm = None,
            _ => {}
        }
    }

    fn on_input_key(&mut self, k: KeyEvent) {
        let Some(input) = self.state.input.as_mut() else {
            return;
        };
        match k.code {
            KeyCode::Esc => self.state.input = None,
            KeyCode::Enter => {
                let input = self.state.input.take().expect("checked above");
                self.finish_input(input);
            }
            // Ctrl+Z as well as the field's own Ctrl+U: the undo most people try first.
            KeyCode::Char('z') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                input.field.undo();
            }
            _ => {
                input.field.input(k);
            }
        }
    }

    fn finish_input(&mut self, input: Input) {
        let typed = input.text();
        let text = typed.trim().to_string();
        match input.purpose {
            InputPurpose::NewBotName => {
                if text.is_empty() {
                    return;
                }
                self.attempt(|a| {
                    let p = a.session.parts()?;
                    app::bots::new_bot(p.store, p.config, &text, None)?;
                    a.state.input = Some(Input::new(
                        InputPurpose::NewBotSource(text.clone()),
                        format!("Tweets for {text}: a file, archive or @handle (Enter: later)"),
                        "",
                        None,
                    ));
                    Ok(())
                });
                if let Some(i) = self.state.bots.iter().position(|b| b.name == text) {
                    self.state.bot_sel = i;
                }
            }
            InputPurpose::NewBotSource(bot) => self.start_import(bot, text),
            InputPurpose::ImportSource => {
                if let Some(b) = self.state.bot().map(|b| b.name.clone()) {
                    self.start_import(b, text)
                }
            }
            InputPurpose::Prime => self.state.prime = typed,
            InputPurpose::EditCandidate(id) => {
                // The list may have been reloaded while the editor was open.
                if let Some(i) = self.state.candidates.iter().position(|c| c.id == id) {
                    self.state.cand_sel = i;
                    self.review(Review::Edit(text));
                }
            }
        }
    }

    fn start_import(&mut self, bot: String, source: String) {
        if source.is_empty() {
            return self
                .state
                .say(format!("{bot} has no tweets yet: press i to import later"));
        }
        self.state.busy = Some(format!("importing {source} into {bot}"));
        jobs::import(self.session.for_job(), bot, source, self.tx.clone());
    }

    /// Applies one job event.
    pub fn on_event(&mut self, e: AppEvent) {
        let s = &mut self.state;
        match e {
            AppEvent::Train(ev) => {
                if let Some(t) = s.training.as_mut() {
                    t.apply(ev);
                }
            }
            AppEvent::TrainDone(r) => {
                if let Some(t) = s.training.as_mut() {
                    t.running = false;
                    t.stopping = false;
                    t.outcome = Some(match &r {
                        Ok(o) => o.to_lowercase(),
                        Err(_) => "failed".into(),
                    });
                }
                match r {
                    Ok(o) => s.say(format!("fine-tune ended: {}", o.to_lowercase())),
                    Err(e) => s.error(format!("fine-tuning failed: {e}")),
                }
                if self.quit_after_training {
                    self.quit = true;
                }
                self.attempt(|_| Ok(()));
            }
            AppEvent::Generated(r) => {
                s.generating = false;
                match r {
                    Ok(n) => s.say(format!("{n} new candidates")),
                    Err(e) => s.error(e),
                }
                self.state.cand_sel = 0;
                self.attempt(|_| Ok(()));
            }
            AppEvent::Imported(r) | AppEvent::Posted(r) => {
                s.busy = None;
                match r {
                    Ok(m) => s.say(m),
                    Err(e) => s.error(e),
                }
                self.attempt(|_| Ok(()));
            }
        }
    }

    /// Applies every waiting job event; true if there were any.
    pub fn pump(&mut self) -> bool {
        let mut any = false;
        while let Ok(e) = self.rx.try_recv() {
            self.on_event(e);
            any = true;
        }
        any
    }
}

/// Runs the TUI until the user quits.
pub fn run(session: Session) -> Result<()> {
    let mut app = App::new(session)?;
    in_terminal(|terminal| main_loop(terminal, &mut app))
}

/// Runs `body` on the terminal in raw mode on the alternate screen, and puts the terminal back
/// however `body` ends: returning, failing, or panicking (ratatui's panic hook restores it
/// before the panic is printed).
pub fn in_terminal<T>(body: impl FnOnce(&mut ratatui::DefaultTerminal) -> Result<T>) -> Result<T> {
    let mut terminal = ratatui::init();
    let result = body(&mut terminal);
    ratatui::restore();
    result
}

fn main_loop(terminal: &mut ratatui::DefaultTerminal, app: &mut App) -> Result<()> {
    let io = |e: std::io::Error| crate::Error::io("<terminal>", e);
    let mut last_refresh = Instant::now();
    let mut dirty = true;
    while !app.quit {
        if dirty {
            terminal.draw(|f| ui::draw(f, &app.state)).map_err(io)?;
            dirty = false;
        }
        if crossterm::event::poll(Duration::from_millis(40)).map_err(io)? {
            match crossterm::event::read().map_err(io)? {
                Event::Key(k) => app.on_key(k),
                Event::Resize(..) => {}
                _ => continue,
            }
            dirty = true;
        }
        if app.pump() {
            dirty = true;
        }
        // The scheduler may run in another process: look at the store now and then.
        if last_refresh.elapsed() > Duration::from_secs(5) {
            if let Err(e) = app.refresh() {
                app.state.error(e);
            }
            last_refresh = Instant::now();
            dirty = true;
        }
    }
    Ok(())
}
