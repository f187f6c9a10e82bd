//! The TUI's key handling over a real home, without a terminal: keys go to `App::on_key`,
//! background jobs report through `App::pump`, and the store is checked after each step.

use std::path::Path;
use std::time::{Duration, Instant};

use aviary::app::QueueStatus;
use aviary::app::{Config, Home, Session};
use aviary::tui::keymap::Pane;
use aviary::tui::state::Confirm;
use aviary::tui::App;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

fn key(app: &mut App, c: char) {
    app.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

fn code(app: &mut App, k: KeyCode) {
    app.on_key(KeyEvent::new(k, KeyModifiers::NONE));
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, c);
    }
}

/// Pumps job events until `done` holds (or fails after 60 s).
fn until(app: &mut App, what: &str, done: impl Fn(&App) -> bool) {
    let t = Instant::now();
    while !done(app) {
        app.pump();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {}",
            app.state.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn app_at(home: &Path) -> App {
    App::new(Session::open(
        Home::resolve(Some(home.to_path_buf())).unwrap(),
        Config::default(),
        None,
    ))
    .unwrap()
}

#[test]
fn first_launch_has_the_sample_bot_and_review_queues() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(dir.path());
    assert_eq!(app.state.bots.len(), 1);
    assert_eq!(app.state.bots[0].name, "sample");
    assert!(app.state.bots[0].kept > 3000, "{:?}", app.state.bots[0]);
    assert!(app.state.status.contains("Welcome"));
    // A second launch does not add another.
    drop(app);
    let mut app = app_at(dir.path());
    assert_eq!(app.state.bots.len(), 1);
    assert!(!app.state.status.contains("Welcome"));

    code(&mut app, KeyCode::Enter);
    assert_eq!(app.state.pane, Pane::Training);
    key(&mut app, '3');
    assert_eq!(app.state.pane, Pane::Generation);
    let t0 = app.state.temperature;
    key(&mut app, '+');
    assert!((app.state.temperature - t0 - 0.1).abs() < 1e-9);
    key(&mut app, 'g');
    until(&mut app, "candidates", |a| !a.state.generating);
    assert!(app.state.candidates.len() >= 5, "{}", app.state.status);
    let first = app.state.candidates[0].id;
    key(&mut app, 'a');
    assert_eq!(
        app.state
            .candidates
            .iter()
            .find(|c| c.id == first)
            .unwrap()
            .status,
        "approved"
    );
    assert_eq!(app.state.queue.len(), 1);
    // Edit the second in place: over 280 characters is refused in words, not a panic.
    key(&mut app, 'e');
    assert!(app.state.input.is_some());
    typed(&mut app, &"!".repeat(300));
    code(&mut app, KeyCode::Enter);
    assert!(
        app.state.status_is_error && app.state.status.contains("280"),
        "{}",
        app.state.status
    );
    key(&mut app, 'e');
    for _ in 0..400 {
        code(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "a tweet typed in the editor");
    code(&mut app, KeyCode::Enter);
    assert_eq!(app.state.queue.len(), 2, "{}", app.state.status);
    assert!(app
        .state
        .queue
        .iter()
        .any(|q| q.text == "a tweet typed in the editor"));
    // Undo takes the edit back out of the queue, then the approval.
    key(&mut app, 'u');
    assert_eq!(app.state.queue.len(), 1);
    key(&mut app, 'u');
    assert!(app.state.queue.is_empty());
    key(&mut app, 'u');
    assert!(app.state.status.contains("nothing to undo"));

    // Queue pane: approve two, move the second up, remove it.
    key(&mut app, 'a');
    key(&mut app, 'a');
    key(&mut app, '4');
    assert_eq!(app.state.pane, Pane::Queue);
    let queued: Vec<i64> = app.state.queue.iter().map(|q| q.id).collect();
    assert_eq!(queued.len(), 2);
    key(&mut app, 'j');
    key(&mut app, 'K');
    assert_eq!(app.state.queue[0].id, queued[1]);
    assert_eq!(app.state.queue_sel, 0, "the selection follows the entry");
    key(&mut app, 'r');
    assert_eq!(app.state.queue.len(), 1);
    // Post now goes to the dry-run outbox (no credentials).
    key(&mut app, 'P');
    until(&mut app, "the post", |a| a.state.busy.is_none());
    assert_eq!(
        app.state.queue[0].status,
        QueueStatus::Posted,
        "{}",
        app.state.status
    );
    assert!(dir.path().join("outbox.jsonl").exists());
}

#[test]
fn new_bot_import_delete_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let tweets = dir.path().join("mine.txt");
    std::fs::write(
        &tweets,
        "first tweet of mine here\nsecond tweet of mine here\n",
    )
    .unwrap();
    let mut app = app_at(&dir.path().join("home"));
    key(&mut app, 'n');
    typed(&mut app, "mybot");
    code(&mut app, KeyCode::Enter);
    typed(&mut app, tweets.to_str().unwrap());
    code(&mut app, KeyCode::Enter);
    until(&mut app, "the import", |a| a.state.busy.is_none());
    let b = app.state.bots.iter().find(|b| b.name == "mybot").unwrap();
    assert_eq!(b.kept, 2, "{}", app.state.status);
    assert_eq!(app.state.bot().unwrap().name, "mybot");
    // A missing file is an error in words, and the bot stays.
    key(&mut app, 'i');
    typed(&mut app, "/no/such/file.txt");
    code(&mut app, KeyCode::Enter);
    until(&mut app, "the import", |a| a.state.busy.is_none());
    assert!(app.state.status_is_error && app.state.status.contains("/no/such/file.txt"));
    // Help opens and closes; keys do nothing else meanwhile.
    key(&mut app, '?');
    assert!(app.state.help);
    key(&mut app, 'd');
    assert!(app.state.confirm.is_none());
    code(&mut app, KeyCode::Esc);
    assert!(!app.state.help);
    // Delete asks; n keeps it, y deletes it.
    key(&mut app, 'd');
    key(&mut app, 'n');
    assert!(app.state.bots.iter().any(|b| b.name == "mybot"));
    key(&mut app, 'd');
    key(&mut app, 'y');
    assert!(!app.state.bots.iter().any(|b| b.name == "mybot"));
    key(&mut app, 'q');
    assert!(app.quit);
}

#[test]
fn training_starts_stops_resumes_and_quitting_asks_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    // Small steps, so a stop lands mid-run.
    config.finetune.batch_size = 8;
    config.finetune.num_epochs = 3;
    let mut app = App::new(Session::open(
        Home::resolve(Some(dir.path().to_path_buf())).unwrap(),
        config,
        None,
    ))
    .unwrap();
    // The welcome says "t fine-tunes it" on the Bots pane: t works there and shows the run.
    assert!(app.state.status.contains("t fine-tunes it"));
    assert_eq!(app.state.pane, Pane::Bots);
    key(&mut app, 't');
    assert!(app.state.training_runs());
    assert_eq!(app.state.pane, Pane::Training);
    until(&mut app, "a few steps", |a| {
        a.state.training.as_ref().is_some_and(|t| t.step >= 3)
    });
    // Quitting asks while it runs; n keeps it running.
    key(&mut app, 'q');
    assert!(app.state.confirm.is_some() && !app.quit);
    key(&mut app, 'n');
    key(&mut app, 's');
    until(&mut app, "the stop", |a| !a.state.training_runs());
    assert!(app.state.bots[0].resumable, "{}", app.state.status);
    // Stopped with its state saved: the card's progress is where t resumes.
    let model = dir.path().join("bots/sample/model");
    let saved_step = |m: &std::path::Path| -> u64 {
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m.join("card.json")).unwrap()).unwrap();
        card["training"]["progress"]["step"].as_u64().unwrap()
    };
    let stopped_at = saved_step(&model);
    assert!(stopped_at > 0 && model.join("state.safetensors").exists());
    // t resumes from the saved step, not from zero.
    key(&mut app, 't');
    assert!(
        app.state.status.contains("resuming"),
        "{}",
        app.state.status
    );
    until(&mut app, "the resumed run's first event", |a| {
        a.state.training.as_ref().is_some_and(|t| t.total_steps > 0)
    });
    let resumed = app.state.training.as_ref().unwrap().start_step;
    assert_eq!(resumed, stopped_at, "resumed where it was saved");
    // Quit while training: y stops it with the state saved, then the app ends.
    key(&mut app, 'q');
    key(&mut app, 'y');
    until(&mut app, "the quit", |a| a.quit);
    assert!(
        saved_step(&model) > stopped_at,
        "the quit saved the steps since"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["progress"]["stopped"], "cancelled");
}

/// `t` on a bot whose fine-tune finished asks before replacing its model: `n` keeps it.
#[test]
fn fine_tuning_again_asks_before_replacing_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    // A fine-tune that finishes at once: early stopping at the second validation, one small
    // batch of held-out text each.
    config.finetune.batch_size = 8;
    config.finetune.val_every = 1;
    config.finetune.patience = 1;
    config.finetune.min_delta = 10.0;
    config.finetune.smoothing = 1.0;
    config.train.seq_len = 32;
    config.train.val_batches = 1;
    let mut app = App::new(Session::open(
        Home::resolve(Some(dir.path().to_path_buf())).unwrap(),
        config,
        None,
    ))
    .unwrap();
    code(&mut app, KeyCode::Enter);
    key(&mut app, 't');
    until(&mut app, "the fine-tune's end", |a| {
        !a.state.training_runs() && a.state.bots[0].fine_tuned
    });
    let weights = dir.path().join("bots/sample/model/model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    key(&mut app, 't');
    assert!(
        matches!(app.state.confirm, Some(Confirm::Retrain(_))),
        "no question before replacing: {:?} {}",
        app.state.confirm,
        app.state.status
    );
    assert!(!app.state.training_runs());
    key(&mut app, 'n');
    assert!(app.state.confirm.is_none() && !app.state.training_runs());
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "the model is kept"
    );
    // y replaces it: a new run from step 0.
    key(&mut app, 't');
    key(&mut app, 'y');
    until(&mut app, "the new run", |a| {
        a.state.training.as_ref().is_some_and(|t| t.total_steps > 0)
    });
    assert_eq!(app.state.training.as_ref().unwrap().start_step, 0);
    key(&mut app, 's');
    until(&mut app, "the stop", |a| !a.state.training_runs());
}

/// The editor and prompts are a text field: fixing a word in the middle needs no retyping.
#[test]
fn prompts_edit_in_the_middle_jump_words_delete_forward_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app_at(dir.path());
    let ctrl = |app: &mut App, k: KeyCode| {
        app.on_key(KeyEvent::new(k, KeyModifiers::CONTROL));
    };
    let text = |app: &App| app.state.input.as_ref().expect("a prompt is open").text();
    key(&mut app, '3');
    key(&mut app, 'p');
    typed(&mut app, "the cat sat");
    code(&mut app, KeyCode::Home);
    for _ in 0..4 {
        code(&mut app, KeyCode::Right);
    }
    typed(&mut app, "big ");
    assert_eq!(text(&app), "the big cat sat");
    // Jump to the next word, delete it forward, type another.
    ctrl(&mut app, KeyCode::Right);
    for _ in 0..3 {
        code(&mut app, KeyCode::Delete);
    }
    assert_eq!(text(&app), "the big cat ");
    typed(&mut app, "dog");
    assert_eq!(text(&app), "the big cat dog");
    ctrl(&mut app, KeyCode::Char('z'));
    let undone = text(&app);
    assert!(
        undone.len() < "the big cat dog".len() && "the big cat dog".starts_with(&undone),
        "Ctrl+Z did not take typing back: {undone:?}"
    );
    code(&mut app, KeyCode::End);
    typed(&mut app, "!");
    code(&mut app, KeyCode::Enter);
    assert!(app.state.input.is_none());
    assert_eq!(app.state.prime, format!("{undone}!"));
}

/// A refresh (every 5 seconds while the TUI runs) reads each table once, however many bots
/// there are: the store's statements per refresh do not grow with the bots.
#[test]
fn a_refresh_costs_the_same_statements_for_one_bot_or_many() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = app_at(dir.path());
    let per_refresh = |app: &mut App| {
        let before = app.store_statements();
        app.refresh().unwrap();
        app.store_statements() - before
    };
    let one = per_refresh(&mut app);
    assert!(one > 0, "the counter counts nothing");
    // Five more bots, each with a queued tweet and a schedule.
    let home = Home::resolve(Some(dir.path().to_path_buf())).unwrap();
    let config = Config::default();
    let mut store = home.open_store().unwrap();
    for k in 0..5 {
        let name = format!("bot{k}");
        aviary::app::bots::new_bot(&mut store, &config, &name, None).unwrap();
        aviary::app::posting::queue_text(&mut store, &name, &format!("tweet number {k} here"))
            .unwrap();
    }
    drop(store);
    let six = per_refresh(&mut app);
    assert_eq!(app.state.bots.len(), 6);
    assert_eq!(six, one, "statements per refresh grew with the bots");
    assert!(one <= 8, "{one} statements for one refresh");
}
