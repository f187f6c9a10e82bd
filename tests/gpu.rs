//! The CUDA path against the CPU path on the same inputs, piece by piece so a failure names
//! the piece: the LSTM layer (the fused op: forward and the gradients
//! of all three inputs to 1e-4), dropout (the same masks, bit for bit), the loss and its
//! gradient, RMSprop steps (the last clipped on the device), and a few training steps of a
//! small model. Without `--features cuda` each is ignored with that reason (so `cargo test`
//! counts them as ignored, not passed); in a CUDA build where no GPU answers, each says
//! `SKIPPED <test>: <why>` among `cargo test`'s lines.

mod common;

use aviary::model::dropout::Dropout;
use aviary::model::fused_lstm::lstm_sequence;
use aviary::model::{loss, ModelConfig};
use aviary::train::optim::RmsProp;
use aviary::train::{Learner, TrainConfig};
use candle_core::{DType, Device, Tensor, Var};

/// The GPU, or why there is none.
fn gpu() -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("built without --features cuda".into());
    }
    Device::new_cuda(0).map_err(|e| format!("no CUDA device answers: {e}"))
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Ok(d) => d,
            Err(why) => return common::skipped(&why),
        }
    };
}

fn rand(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(common::noise(n, seed, scale), shape, &Device::Cpu).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    host(a)
        .iter()
        .zip(host(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest difference relative to the CPU tensor's largest magnitude (at least 1).
fn relative_diff(cpu: &Tensor, gpu: &Tensor) -> f32 {
    let scale = host(cpu).iter().map(|x| x.abs()).fold(1.0, f32::max);
    max_diff(cpu, gpu) / scale
}

type Layer = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

/// The layer at the reference config's size (512 units, batch 128, 32 steps, input 64 + 1) on
/// the GPU with `layer` against the fused op on the CPU.
fn layer_matches_the_cpu(dev: &Device, layer: Layer, label: &str) {
    let (t, b, i, h) = (32, 128, 65, 512);
    let inputs = [
        rand(&[t, b, i], 1, 1.0),
        rand(&[4 * h, i], 2, 0.1),
        rand(&[4 * h, h], 3, 0.05),
    ];
    let probe = rand(&[t, b, h], 4, 1.0);
    let run = |d: &Device, layer: Layer| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| Var::from_tensor(&x.to_device(d).unwrap()).unwrap())
            .collect();
        let out = layer(&vars[0], &vars[1], &vars[2]).unwrap();
        let g = out
            .mul(&probe.to_device(d).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect();
        (out, grads)
    };
    let (cpu_out, cpu_grads) = run(&Device::Cpu, lstm_sequence);
    let (gpu_out, gpu_grads) = run(dev, layer);
    let f = max_diff(&cpu_out, &gpu_out);
    println!("{label}: forward max diff {f:e}");
    assert!(f < 1e-4, "{label}: forward differs by {f}");
    for (name, (a, b)) in ["x", "w_in", "w_hh"]
        .iter()
        .zip(cpu_grads.iter().zip(&gpu_grads))
    {
        // Gradients sum over 4,096 rows and 32 steps: compare relative to their size.
        let d = relative_diff(a, b);
        println!("{label}: d{name} max relative diff {d:e}");
        assert!(d < 1e-4, "{label}: d{name} differs by {d} (relative)");
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and a GPU"
)]
fn cuda_fused_lstm_matches_the_cpu_to_1e_4() {
    let dev = gpu_or_skip!();
    layer_matches_the_cpu(&dev, lstm_sequence, "fused op");
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and a GPU"
)]
fn cuda_dropout_draws_the_cpu_masks() {
    let dev = gpu_or_skip!();
    let x = rand(&[4096, 512], 5, 2.0);
    let apply = |d: &Device| {
        let v = Var::from_tensor(&x.to_device(d).unwrap()).unwrap();
        let mut drop = Dropout::new(0.05, 42);
        let first = drop.apply(&v).unwrap();
        let second = drop.apply(&first).unwrap();
        let g = second.sum_all().unwrap().backward().unwrap();
        (host(&second), host(g.get(&v).unwrap()))
    };
    let (cpu, cpu_grad) = apply(&Device::Cpu);
    let (gpu, gpu_grad) = apply(&dev);
    assert!(cpu == gpu, "the GPU's masks differ from the CPU's");
    assert!(cpu_grad == gpu_grad, "the GPU's dropout gradient differs");
    let dropped = cpu.iter().filter(|&&v| v == 0.0).count() as f64 / cpu.len() as f64;
    assert!((0.09..0.105).contains(&dropped), "dropped {dropped}");
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and a GPU"
)]
fn cuda_loss_and_gradient_match_the_cpu() {
    let dev = gpu_or_skip!();
    let (n, v) = (4096, 300);
    let logits = rand(&[n, v], 6, 4.0);
    let targets: Vec<u32> = (0..n as u32).map(|k| (k * 7919) % v as u32).collect();
    let run = |d: &Device| {
        let x = Var::from_tensor(&logits.to_device(d).unwrap()).unwrap();
        let t = Tensor::from_vec(targets.clone(), n, d).unwrap();
        let l = loss::cross_entropy(&x, &t).unwrap();
        let g = l.affine(2.0, 0.0).unwrap().backward().unwrap();
        (
            l.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap(),
            g.get(&x).unwrap().clone(),
        )
    };
    let (cpu_loss, cpu_grad) = run(&Device::Cpu);
    let (gpu_loss, gpu_grad) = run(&dev);
    println!("loss cpu {cpu_loss} gpu {gpu_loss}");
    assert!((cpu_loss - gpu_loss).abs() < 1e-4 * cpu_loss.abs().max(1.0));
    let d = max_diff(&cpu_grad, &gpu_grad);
    println!("loss gradient max diff {d:e}");
    assert!(d < 1e-7, "loss gradient differs by {d}");
}

/// Ten parameters (two kernel launches' lists of eight), one at the size of W_hh, stepped
/// with fixed scales and then clipped on the device, as training does.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and a GPU"
)]
fn cuda_rmsprop_step_matches_the_cpu() {
    let dev = gpu_or_skip!();
    let shapes: Vec<Vec<usize>> = (0..10)
        .map(|k| match k {
            3 => vec![2048, 512],
            _ => vec![100 * k + 7, 3],
        })
        .collect();
    let p0: Vec<Tensor> = (0..10)
        .map(|k| rand(&shapes[k], 7 + k as u64, 0.1))
        .collect();
    let run = |d: &Device| {
        let ps: Vec<Var> = p0
            .iter()
            .map(|p| Var::from_tensor(&p.to_device(d).unwrap()).unwrap())
            .collect();
        let named = (0..10).map(|k| (format!("p{k}"), ps[k].clone())).collect();
        let mut opt = RmsProp::new(named, 1e-3, 0.99, 1e-8).unwrap();
        let grads = || {
            let mut loss = ps[0].sqr().unwrap().sum_all().unwrap();
            for p in &ps[1..] {
                loss = loss.add(&p.sqr().unwrap().sum_all().unwrap()).unwrap();
            }
            loss.backward().unwrap()
        };
        for scale in [1.0, 0.3] {
            opt.step(&grads(), scale).unwrap();
        }
        // The norm is far above 0.5: clipped.
        opt.clip_and_step(&grads(), 0.5).unwrap();
        ps.iter().map(|p| p.as_tensor().clone()).collect::<Vec<_>>()
    };
    let (cpu, gpu) = (run(&Device::Cpu), run(&dev));
    for (k, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        let d = relative_diff(c, g);
        println!("rmsprop parameter {k} max relative diff {d:e}");
        assert!(d < 1e-5, "parameter {k} differs by {d} after three steps");
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a build with --features cuda and a GPU"
)]
fn cuda_training_steps_follow_the_cpu() {
    let dev = gpu_or_skip!();
    let vocab = 40;
    let model = ModelConfig {
        rnn_size: 128,
        ..ModelConfig::default()
    };
    let train = TrainConfig {
        batch_size: 32,
        seq_len: 16,
        ..TrainConfig::default()
    };
    let weights = model.init_weights(vocab, 1, &Device::Cpu).unwrap();
    let (t, b) = (train.seq_len, train.batch_size);
    let ids: Vec<u32> = (0..(t * b + 1) as u32)
        .map(|k| (k * 31 + k / 7) % vocab as u32)
        .collect();
    let losses = |d: &Device| -> Vec<f64> {
        let mut learner = Learner::new(&weights, &model, vocab, &train, d).unwrap();
        (0..5)
            .map(|step| {
                let x = Tensor::from_vec(ids[..t * b].to_vec(), (t, b), d).unwrap();
                let y = Tensor::from_vec(ids[1..].to_vec(), (t, b), d).unwrap();
                learner.step(&x, &y, step, train.clip_norm).unwrap()
            })
            .collect()
    };
    let (cpu, gpu) = (losses(&Device::Cpu), losses(&dev));
    println!("losses cpu {cpu:?}\nlosses gpu {gpu:?}");
    assert!(cpu[4] < cpu[0], "the CPU run did not learn");
    for (a, b) in cpu.iter().zip(&gpu) {
        assert!((a - b).abs() < 1e-3 * a.abs(), "cpu {a} vs gpu {b}");
    }
}
