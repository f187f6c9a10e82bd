//! A run interrupted and resumed ends with the same weights as a run that never stopped.

mod common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use aviary::model::Checkpoint;
use aviary::train::{BatchStream, CorpusRules, Split, StopReason, StreamSpec, TrainEvent, Trainer};
use candle_core::{Device, Tensor};
use common::{tiny_model, tiny_train, Lines};

fn flat(weights: &HashMap<String, Tensor>) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = weights
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn run(trainer: &mut Trainer) -> (StopReason, Vec<TrainEvent>) {
    let (tx, rx) = mpsc::channel();
    let reason = trainer.run(&tx, &AtomicBool::new(false)).unwrap();
    drop(tx);
    (reason, rx.into_iter().collect())
}

#[test]
fn interrupted_and_resumed_run_ends_with_identical_weights() {
    let source = Lines(common::tweets(80));
    let total = 60;
    let straight_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train();
    config.max_steps = total;
    config.patience = 0;
    let mut straight = Trainer::new(
        &source,
        straight_dir.path(),
        tiny_model(),
        config.clone(),
        Device::Cpu,
    )
    .unwrap();
    let per_epoch = straight.steps_per_epoch();
    assert!(
        per_epoch < 40,
        "the fixture must make the run cross an epoch boundary ({per_epoch} steps/epoch)"
    );
    let (reason, events) = run(&mut straight);
    assert_eq!(reason, StopReason::MaxSteps);
    assert!(events
        .iter()
        .any(|e| matches!(e, TrainEvent::Step { step, .. } if *step == total)));

    // The same run, stopped twice: mid-epoch, between validations, and again after an
    // epoch boundary.
    let dir = tempfile::tempdir().unwrap();
    let mut first = config.clone();
    first.max_steps = 11;
    let mut t = Trainer::new(&source, dir.path(), tiny_model(), first, Device::Cpu).unwrap();
    assert_eq!(run(&mut t).0, StopReason::MaxSteps);
    drop(t);
    for stop in [per_epoch + 3, total] {
        let mut t =
            Trainer::resume(&source, dir.path(), |c| c.max_steps = stop, Device::Cpu).unwrap();
        let (reason, events) = run(&mut t);
        assert_eq!(reason, StopReason::MaxSteps);
        match &events[0] {
            TrainEvent::Started { start_step, .. } => {
                assert!(*start_step > 0, "resume started from scratch")
            }
            e => panic!("first event {e:?}"),
        }
        if stop == total {
            let seconds_aside = |p: &aviary::train::Progress| aviary::train::Progress {
                train_seconds: 0.0,
                ..p.clone()
            };
            assert_eq!(
                seconds_aside(t.progress()),
                seconds_aside(straight.progress()),
                "progress differs after resume"
            );
            assert_eq!(
                flat(&t.weights()),
                flat(&straight.weights()),
                "latest weights differ after resume"
            );
        }
    }
    let a = Checkpoint::load(straight_dir.path(), &Device::Cpu).unwrap();
    let b = Checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(
        flat(&a.weights),
        flat(&b.weights),
        "best checkpoints differ"
    );
}

#[test]
fn training_lowers_validation_loss_and_stops_early() {
    let source = Lines(common::tweets(300));
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train();
    config.num_epochs = 200;
    // Stop after two validations that improve on nothing: the last weights are not the best.
    config.patience = 2;
    config.min_delta = 0.0;
    let mut t = Trainer::new(&source, dir.path(), tiny_model(), config, Device::Cpu).unwrap();
    let (reason, events) = run(&mut t);
    let vals: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Validated { val_loss, .. } => Some(*val_loss),
            _ => None,
        })
        .collect();
    assert_eq!(
        reason,
        StopReason::EarlyStopped,
        "200 epochs of a tiny corpus must plateau"
    );
    assert!(vals.len() >= 3);
    let best = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        best < vals[0] - 0.5,
        "validation loss went from {} to best {best}",
        vals[0]
    );
    // The checkpoint on disk holds the best weights, and its card says so.
    let ck = Checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    let model = ck.model(&Device::Cpu).unwrap();
    let record = ck.card.training.unwrap();
    let card_best = record["progress"]["best_val_loss"].as_f64().unwrap();
    assert!(
        (card_best - best).abs() < 1e-9,
        "card best {card_best} vs events best {best}"
    );
    // And the saved weights are those weights: on the validation batches the trainer reads,
    // they give the best loss recorded (the last weights of an early-stopped run do not).
    let config = tiny_train();
    let spec = StreamSpec {
        split: Split::Validation,
        val_fraction: config.val_fraction,
        rules: CorpusRules::default(),
        batch: config.batch_size,
        seq_len: config.seq_len,
        shuffle_windows: 1,
        seed: 0,
        keep_partial: true,
    };
    let (mut sum, mut n) = (0f64, 0f64);
    for b in BatchStream::new(&source, &ck.card.vocab, spec)
        .unwrap()
        .take(config.val_batches)
    {
        let b = b.unwrap();
        let shape = (b.seq_len, b.batch);
        let x = Tensor::from_vec(b.inputs, shape, &Device::Cpu).unwrap();
        let y = Tensor::from_vec(b.targets, shape, &Device::Cpu).unwrap();
        let loss = model
            .loss(&x, &y, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let chars = (b.batch * b.seq_len) as f64;
        (sum, n) = (sum + loss * chars, n + chars);
    }
    let saved = sum / n;
    assert!(
        (saved - card_best).abs() < 1e-5,
        "the saved weights give {saved}, the best recorded was {card_best}"
    );
    let last = *vals.last().unwrap();
    assert!(
        last > card_best + 1e-6,
        "the run ended on its best: the check above proves nothing"
    );
}
