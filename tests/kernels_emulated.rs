//! Every CUDA kernel of `src/model/kernels.cu`, compiled as plain C++ for the CPU
//! (`tests/cuda_emu/`: a shim for CUDA's dialect and a harness that launches a kernel the way
//! the Rust launchers do: same grid, block and arguments), against the CPU code it transcribes.
//! This checks the kernels' indexing and arithmetic on a machine without a GPU; `tests/gpu.rs`
//! checks them on one. Skips, saying why, where no C++20 compiler (g++) is found.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aviary::model::cpu_kernels as kernels;
use aviary::model::dropout::{mask_key, Dropout};
use aviary::model::loss::cross_entropy;
use aviary::train::optim::RmsProp;
use candle_core::{Device, Tensor, Var};
use common::noise as data;

/// The emulator binary, built once per test run, or why there is none.
fn emulator() -> Result<&'static Path, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Cargo's scratch folder for integration tests, inside target/.
            let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new("g++")
                .args(["-std=c++20", "-O1", "-pthread", "-I"])
                .arg(root.join("tests/cuda_emu"))
                .arg("-I")
                .arg(root.join("src/model"))
                .arg("-include")
                .arg(root.join("tests/cuda_emu/shim.h"))
                .args(["-x", "c++"])
                .arg(root.join("src/model/kernels.cu"))
                .args(["-x", "none"])
                .arg(root.join("tests/cuda_emu/harness.cpp"))
                .arg("-o")
                .arg(&bin)
                .output()
                .map_err(|e| format!("no g++ to compile the kernels for the CPU ({e})"))?;
            // A compiler that is there but rejects our files is a failure, not a skip.
            assert!(
                out.status.success(),
                "g++ could not compile kernels.cu with the shim:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(bin)
        })
        .as_ref()
        .map(|p| p.as_path())
        .map_err(Clone::clone)
}

macro_rules! emulator_or_skip {
    () => {
        match emulator() {
            Ok(bin) => bin,
            Err(why) => return common::skipped(&why),
        }
    };
}

/// A kernel argument.
enum A<'a> {
    U32(usize),
    U64(u64),
    F32(f32),
    Null,
    /// A device buffer of f32 (read back after the run).
    F(&'a [f32]),
    /// A device buffer of u32.
    U(&'a [u32]),
}

/// Runs `kernel` over a grid of `grid` (x, y) blocks of `block` threads (`coop`: all threads
/// of a block at once, for kernels with barriers); returns each f32 buffer argument as the
/// kernel left it, in order.
fn launch(
    bin: &Path,
    kernel: &str,
    grid: (usize, usize),
    block: usize,
    coop: bool,
    args: &[A],
) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        kernel,
        &format!("{}x{}", grid.0, grid.1),
        &block.to_string(),
        if coop { "coop" } else { "seq" },
    ]);
    let mut outputs = Vec::new();
    for (k, a) in args.iter().enumerate() {
        let path = dir.path().join(format!("arg{k}"));
        let bytes: Vec<u8> = match a {
            A::U32(v) => {
                cmd.arg(format!("u32:{v}"));
                continue;
            }
            A::U64(v) => {
                cmd.arg(format!("u64:{v}"));
                continue;
            }
            A::F32(v) => {
                cmd.arg(format!("f32:{v:e}"));
                continue;
            }
            A::Null => {
                cmd.arg("null");
                continue;
            }
            A::F(d) => {
                outputs.push(dir.path().join(format!("arg{k}.out")));
                d.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            A::U(d) => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        std::fs::write(&path, bytes).unwrap();
        cmd.arg(format!("buf:{}", path.display()));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{kernel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs
        .iter()
        .map(|p| {
            std::fs::read(p)
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect()
}

/// [`launch`] over `n` threads in blocks of 1024, one thread after another, as
/// `model::cuda::launch` configures it (`LaunchConfig::for_num_elems`).
fn launch_elems(bin: &Path, kernel: &str, n: usize, args: &[A]) -> Vec<Vec<f32>> {
    launch(bin, kernel, (n.div_ceil(1024), 1), 1024, false, args)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let (k, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (k, d)| if d > m.1 { (k, d) } else { m });
    assert!(
        d <= tol,
        "{what}: element {k} differs by {d} ({} vs {})",
        got[k],
        want[k]
    );
}

// Sizes that leave a partial last block: 7 rows x 300 units = 2,100 cells.
const ROWS: usize = 7;
const HIDDEN: usize = 300;

#[test]
fn fused_op_cell_kernels_match_the_cpu_loops() {
    let bin = emulator_or_skip!();
    let (n, n4) = (ROWS * HIDDEN, 4 * ROWS * HIDDEN);
    let gates0 = data(n4, 1, 3.0);
    let c_prev = data(n, 2, 1.0);
    for first_step in [false, true] {
        let (mut gates, mut c, mut tc, mut h) =
            (gates0.clone(), vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let cp = (!first_step).then_some(&c_prev[..]);
        kernels::cell_forward(&mut gates, cp, &mut c, &mut tc, &mut h, HIDDEN);
        let zeros = vec![0f32; n];
        let cp_arg = if first_step { A::Null } else { A::F(&c_prev) };
        let got = launch_elems(
            bin,
            "lstm_seq_cell_fwd",
            n,
            &[
                A::U32(n),
                A::U32(HIDDEN),
                A::F(&gates0),
                cp_arg,
                A::F(&zeros),
                A::F(&zeros),
                A::F(&zeros),
            ],
        );
        // The CPU's exp is a polynomial (2 ulp); the kernel uses expf.
        let label = if first_step {
            "first step"
        } else {
            "later step"
        };
        let out = if first_step {
            [&got[0], &got[1], &got[2], &got[3]]
        } else {
            [&got[0], &got[2], &got[3], &got[4]]
        };
        assert_close(&format!("forward gates, {label}"), out[0], &gates, 1e-6);
        assert_close(&format!("forward c, {label}"), out[1], &c, 1e-6);
        assert_close(&format!("forward tanh c, {label}"), out[2], &tc, 1e-6);
        assert_close(&format!("forward h, {label}"), out[3], &h, 1e-6);

        // Backward from these activations.
        let dh = data(n, 3, 1.0);
        let dc0 = data(n, 4, 1.0);
        let (mut dc, mut dgates) = (dc0.clone(), vec![0f32; n4]);
        kernels::cell_backward(&gates, cp, &tc, &dh, &mut dc, &mut dgates, HIDDEN);
        let zeros4 = vec![0f32; n4];
        let cp_arg = if first_step { A::Null } else { A::F(&c_prev) };
        let got = launch_elems(
            bin,
            "lstm_seq_cell_bwd",
            n,
            &[
                A::U32(n),
                A::U32(HIDDEN),
                A::F(&gates),
                cp_arg,
                A::F(&tc),
                A::F(&dh),
                A::F(&dc0),
                A::F(&zeros4),
            ],
        );
        let k = got.len();
        assert_close(&format!("backward dc, {label}"), &got[k - 2], &dc, 1e-6);
        assert_close(
            &format!("backward dgates, {label}"),
            &got[k - 1],
            &dgates,
            1e-6,
        );
    }
}

#[test]
fn dropout_kernel_draws_the_cpu_mask_bit_for_bit() {
    let bin = emulator_or_skip!();
    let n = 5000;
    let x = data(n, 9, 3.0);
    let (rate, seed) = (0.3f32, 1234u64);
    let mut drop = Dropout::new(rate, seed);
    let xt = Tensor::from_slice(&x, n, &Device::Cpu).unwrap();
    let _first: Vec<f32> = drop.apply(&xt).unwrap().to_vec1().unwrap();
    // The second call's mask: the key must follow the call count too.
    let want: Vec<f32> = drop.apply(&xt).unwrap().to_vec1().unwrap();
    let got = launch_elems(
        bin,
        "dropout_mask",
        n,
        &[
            A::U32(n),
            A::U64(mask_key(seed, 1)),
            A::F32(rate),
            A::F32(1.0 / (1.0 - rate)),
            A::F(&x),
            A::F(&vec![0.0; n]),
        ],
    );
    assert!(got[1] == want, "the kernel's mask differs from the CPU's");
}

/// The RMSprop kernels over a list of three parameters (one larger than the grid's threads,
/// one smaller than a block) from a nonzero square average, clipped to a global norm and then
/// scaled by a fixed factor, against the CPU optimizer.
#[test]
fn rmsprop_kernels_match_the_cpu_optimizer() {
    let bin = emulator_or_skip!();
    let (lr, alpha, eps) = (1e-2, 0.9, 1e-8);
    let sizes = [3000usize, 17, 700];
    let p0: Vec<Vec<f32>> = (0..3).map(|k| data(sizes[k], 20 + k as u64, 1.0)).collect();
    let v0: Vec<Vec<f32>> = (0..3)
        .map(|k| {
            data(sizes[k], 30 + k as u64, 1.0)
                .iter()
                .map(|x| x * x)
                .collect()
        })
        .collect();
    // The CPU optimizer from the same state after one call; its gradients (2p) with them.
    let cpu_step = |clip: Option<f64>, scale: f64| {
        let vars: Vec<Var> = (0..3)
            .map(|k| Var::from_slice(&p0[k], sizes[k], &Device::Cpu).unwrap())
            .collect();
        let named = (0..3).map(|k| (format!("p{k}"), vars[k].clone())).collect();
        let mut opt = RmsProp::new(named, lr, alpha, eps).unwrap();
        let state = (0..3)
            .map(|k| {
                let v = Tensor::from_slice(&v0[k], sizes[k], &Device::Cpu).unwrap();
                (format!("rmsprop.square_avg.p{k}"), v)
            })
            .collect();
        opt.load_state(&state, Path::new("test")).unwrap();
        let mut loss = vars[0].sqr().unwrap().sum_all().unwrap();
        for v in &vars[1..] {
            loss = loss.add(&v.sqr().unwrap().sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        let g: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| grads.get(v).unwrap().to_vec1().unwrap())
            .collect();
        match clip {
            Some(max_norm) => opt.clip_and_step(&grads, max_norm).unwrap(),
            None => opt.step(&grads, scale).unwrap(),
        }
        let params: Vec<Vec<f32>> = vars.iter().map(|v| v.to_vec1().unwrap()).collect();
        let state = opt.state();
        let avgs: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                state[&format!("rmsprop.square_avg.p{k}")]
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (g, params, avgs)
    };
    // The norm (about 70) is far above 0.5: the step is clipped.
    for (clip, scale) in [(Some(0.5), 1.0), (None, 0.3)] {
        let (g, want_p, want_v) = cpu_step(clip, scale);
        // The kernels take any grid; a small one makes each thread loop (3000 > 2 x 256).
        let grid_x = 2;
        let list = |with_state: bool| {
            let mut args = vec![A::U32(3)];
            for k in 0..3 {
                args.push(A::U32(sizes[k]));
                args.push(A::F(&g[k]));
                if with_state {
                    args.extend([A::F(&v0[k]), A::F(&p0[k])]);
                } else {
                    args.extend([A::Null, A::Null]);
                }
            }
            args
        };
        let n_partials = if clip.is_some() { 3 * grid_x } else { 0 };
        let partials = if clip.is_some() {
            let mut args = list(false);
            let zeros = vec![0f32; n_partials];
            args.push(A::F(&zeros));
            launch(bin, "grad_sq_partials", (grid_x, 3), 256, true, &args)
                .pop()
                .unwrap()
        } else {
            vec![0f32; 1]
        };
        let mut args = list(true);
        args.extend([
            A::F(&partials),
            A::U32(n_partials),
            A::F32(clip.unwrap_or(0.0) as f32),
            A::F32(scale as f32),
            A::F32(lr as f32),
            A::F32(alpha as f32),
            A::F32(eps as f32),
        ]);
        let out = launch(bin, "rmsprop_step", (grid_x, 3), 256, true, &args);
        for k in 0..3 {
            // Outputs in order: g, v, p of each parameter, then the partials.
            let label = format!("clip {clip:?}, scale {scale}: parameter {k}");
            assert_close(
                &format!("{label} square average"),
                &out[3 * k + 1],
                &want_v[k],
                1e-6,
            );
            assert_close(
                &format!("{label} values"),
                &out[3 * k + 2],
                &want_p[k],
                1e-6,
            );
        }
    }
}

#[test]
fn softmax_cross_entropy_kernels_match_the_cpu_op() {
    let bin = emulator_or_skip!();
    // More classes than threads in a block (300 > 256) and fewer (40).
    for (rows, classes) in [(5usize, 300usize), (3, 40)] {
        let logits = data(rows * classes, 11, 5.0);
        let targets: Vec<u32> = (0..rows as u32)
            .map(|r| (r * 37 + 5) % classes as u32)
            .collect();
        let x = Var::from_slice(&logits, (rows, classes), &Device::Cpu).unwrap();
        let t = Tensor::from_slice(&targets, rows, &Device::Cpu).unwrap();
        let loss = cross_entropy(&x, &t).unwrap();
        let want_loss = loss.to_scalar::<f32>().unwrap();
        let want_grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = launch(
            bin,
            "softmax_xent_fwd",
            (rows, 1),
            256,
            true,
            &[
                A::U32(classes),
                A::F(&logits),
                A::U(&targets),
                A::F(&vec![0.0; rows * classes]),
                A::F(&vec![0.0; rows]),
            ],
        );
        let (probs, row_loss) = (&got[1], &got[2]);
        let mean = row_loss.iter().sum::<f32>() / rows as f32;
        assert!(
            (mean - want_loss).abs() < 1e-5,
            "{classes} classes: loss {mean} vs {want_loss}"
        );
        let grad_rows = vec![1.0 / rows as f32; rows];
        let n = rows * classes;
        let got = launch_elems(
            bin,
            "softmax_xent_bwd",
            n,
            &[
                A::U32(n),
                A::U32(classes),
                A::U(&targets),
                A::F(&grad_rows),
                A::F(probs),
            ],
        );
        assert_close(
            &format!("{classes} classes: gradient"),
            &got[1],
            &want_grad,
            1e-7,
        );
    }
}
