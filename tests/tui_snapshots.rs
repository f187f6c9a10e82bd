//! Each TUI pane rendered to ratatui's TestBackend, at 80x24 (the smallest terminal it is
//! made for) and 120x40, and compared with the reviewed snapshots in `tests/snapshots/`.

use aviary::app::overview::BotOverview;
use aviary::app::posting::Mode;
use aviary::store::{BotId, CandidateRow, QueueRow, QueueStatus};
use aviary::tui::keymap::Pane;
use aviary::tui::state::{Confirm, Input, InputPurpose, State, TrainingView};
use aviary::tui::ui::draw;
use chrono::{TimeZone, Utc};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn bots() -> Vec<BotOverview> {
    let t = |h, m| Some(Utc.with_ymd_and_hms(2026, 11, 29, h, m, 0).unwrap());
    vec![
        BotOverview {
            name: "sample".into(),
            handle: Some("BarackObama".into()),
            kept: 3080,
            fine_tuned: true,
            best_val_loss: Some(1.0806),
            resumable: false,
            queued: 2,
            next_post: t(9, 12),
            mode: Mode::DryRun("no credentials".into()),
        },
        BotOverview {
            name: "onion".into(),
            handle: Some("TheOnion".into()),
            kept: 1871,
            fine_tuned: false,
            best_val_loss: None,
            resumable: true,
            queued: 0,
            next_post: None,
            mode: Mode::Live,
        },
        BotOverview {
            name: "nasa".into(),
            handle: None,
            kept: 0,
            fine_tuned: false,
            best_val_loss: None,
            resumable: false,
            queued: 0,
            next_post: None,
            mode: Mode::Live,
        },
    ]
}

fn candidate(
    id: i64,
    status: &str,
    text: &str,
    edited: Option<&str>,
    novelty: f64,
) -> CandidateRow {
    CandidateRow {
        id,
        created_at: "2026-11-28T10:00:00Z".into(),
        text: text.into(),
        edited_text: edited.map(str::to_string),
        sampling: "{}".into(),
        novelty: Some(novelty),
        status: status.into(),
        score: Some(-3.0 + id as f64 / 10.0),
    }
}

fn entry(id: i64, status: QueueStatus, text: &str) -> QueueRow {
    QueueRow {
        id,
        bot_id: BotId(1),
        bot: "sample".into(),
        candidate_id: None,
        text: text.into(),
        position: id,
        status,
        planned_at: Some("2026-11-29T09:12:00Z".into()),
        posted_tweet_id: (status == QueueStatus::Posted).then(|| "1861234567890".into()),
        error: (status == QueueStatus::Failed).then(|| "X refused the tweet as a duplicate".into()),
        attempts: 1,
        sending_since: Some("2026-11-28T18:00:03Z".into()),
        next_attempt_at: None,
        posted_at: (status == QueueStatus::Posted).then(|| "2026-11-28T13:04:11Z".into()),
        queued_at: Some("2026-11-28T12:00:00Z".into()),
        first_claimed_at: Some("2026-11-28T18:00:03Z".into()),
    }
}

fn state(pane: Pane) -> State {
    let mut s = State {
        pane,
        bots: bots(),
        ..State::default()
    };
    s.training = Some(TrainingView {
        bot: "sample".into(),
        running: true,
        stopping: false,
        start_step: 0,
        step: 312,
        total_steps: 600,
        steps_per_epoch: 120,
        epoch: 2,
        batch_in_epoch: 72,
        losses: (0..312)
            .map(|i| {
                let loss =
                    2.2 - 0.9 * (i as f64 / 312.0).sqrt() + 0.05 * ((i * 7 % 11) as f64 / 11.0);
                (i as f64, loss)
            })
            .collect(),
        val_losses: vec![(100.0, 1.52), (200.0, 1.31), (300.0, 1.24)],
        best_val: Some(1.24),
        chars_per_s: 9903.0,
        eta_s: 125.0,
        device: "cpu (2 threads)".into(),
        outcome: None,
    });
    s.candidates = vec![
        candidate(
            14,
            "new",
            "We can't wait for change. We have to make it happen, one neighborhood at a time.",
            None,
            0.83,
        ),
        candidate(
            13,
            "approved",
            "Health care is a right, not a privilege. Get covered today.",
            None,
            0.71,
        ),
        candidate(
            12,
            "edited",
            "Thank you, Iowa",
            Some("Thank you, Iowa! See you in the fall."),
            0.92,
        ),
        candidate(
            11,
            "rejected",
            "The President is the President of the President.",
            None,
            0.35,
        ),
    ];
    s.cand_sel = 0;
    s.queue = vec![
        entry(
            7,
            QueueStatus::Sending,
            "Climate change is real, and we can act on it now.",
        ),
        entry(
            8,
            QueueStatus::Queued,
            "Health care is a right, not a privilege. Get covered today.",
        ),
        entry(
            9,
            QueueStatus::Queued,
            "Thank you, Iowa! See you in the fall.",
        ),
        entry(5, QueueStatus::Failed, "Happy birthday, America!"),
        entry(
            3,
            QueueStatus::Posted,
            "Every vote counts. Make a plan to vote.",
        ),
    ];
    s.queue_sel = 1;
    s.posting_line = "dry run (no credentials for `sample`: run `aviary auth sample`) · schedule on · 3 posts/day ≈ $0.05/day · the scheduler runs as `aviary schedule run`".into();
    s
}

fn render(s: &State, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, s)).unwrap();
    t.backend().to_string()
}

macro_rules! snap {
    ($name:ident, $state:expr) => {
        #[test]
        fn $name() {
            let s = $state;
            insta::assert_snapshot!(concat!(stringify!($name), "_80x24"), render(&s, 80, 24));
            insta::assert_snapshot!(concat!(stringify!($name), "_120x40"), render(&s, 120, 40));
        }
    };
}

snap!(bots_pane, state(Pane::Bots));
snap!(training_pane, state(Pane::Training));
snap!(generation_pane, state(Pane::Generation));
snap!(queue_pane, state(Pane::Queue));
snap!(
    help_overlay,
    State {
        help: true,
        ..state(Pane::Generation)
    }
);
snap!(
    editor,
    State {
        input: Some(Input::new(
            InputPurpose::EditCandidate(14),
            "Edit #14",
            "We can't wait for change. We have to make it happen.",
            Some(280),
        )),
        ..state(Pane::Generation)
    }
);
snap!(
    quit_while_training,
    State {
        confirm: Some(Confirm::QuitWhileTraining),
        ..state(Pane::Training)
    }
);
snap!(error_in_the_status_line, {
    let mut s = state(Pane::Bots);
    s.error("database /home/u/aviary.db: is not an aviary database\nHINT: move it aside");
    s
});
snap!(
    first_launch_without_training,
    State {
        training: None,
        bot_sel: 1,
        ..state(Pane::Training)
    }
);
snap!(no_bots, State::default());

#[test]
fn tiny_terminals_do_not_panic() {
    for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 10)] {
        for pane in Pane::ALL {
            render(&state(pane), w, h);
            render(
                &State {
                    help: true,
                    ..state(pane)
                },
                w,
                h,
            );
        }
    }
}
