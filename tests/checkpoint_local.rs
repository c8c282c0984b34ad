//! Checkpoints on the Local backend: round trip, retention, a failed vote, fallback from a
//! damaged or torn newest checkpoint, restores onto other world sizes, permissions, the
//! `ckpt ls` / `ckpt verify` logic, and files that Python's safetensors (or numpy) loads;
//! the same for tensors of every dtype saved from and restored into the caller's buffers.

mod common;
mod python;

use common::Scratch;
use gang::checkpoint::{self, CheckpointStore, Dtype, Meta, RestoredInPlace, State, Tensor, TensorMut, TensorRef};
use gang::{execute, Config, Error};
use std::path::{Path, PathBuf};

/// The state rank `rank` saves at `step`: replicated weights that depend on the step only,
/// a sharded moment that depends on the rank too, and per-rank metadata.
fn state(rank: usize, step: u64) -> State {
    let w: Vec<f32> = (0..6).map(|i| (step as f32) * 0.25 + i as f32 - 1.5).collect();
    State::new()
        .with_replicated(Tensor::new("layer0.weight", vec![2, 3], w).unwrap())
        .with_replicated(Tensor::vector("layer0.bias", vec![step as f32, f32::MIN_POSITIVE, -0.0]))
        .with_sharded(Tensor::vector("adam.m", vec![rank as f32 + step as f32 / 100.0; rank + 1]))
        .with_meta(Meta {
            epoch: step / 10,
            rng_state: vec![0xDEAD_BEEF_0000_0000 + rank as u64, step],
            data_cursor: 1000 * step + rank as u64,
            extra: serde_json::json!({ "lr": 0.01, "rank": rank }),
        })
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

fn store(dir: &Path, retention: usize) -> CheckpointStore {
    // No GANG_FAULT in these tests, whatever the environment says.
    CheckpointStore::new(dir, retention).unwrap().with_faults(Default::default())
}

fn save_steps(dir: &Path, world: usize, retention: usize, steps: &[u64]) {
    let s = store(dir, retention);
    execute(Config::local(world), |ctx| {
        for &step in steps {
            s.save(ctx, step, &state(ctx.rank(), step))?;
        }
        Ok(())
    })
    .unwrap();
}

fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(checkpoint::step_dir_name(step))
}

fn latest(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("LATEST")).unwrap().trim().to_string()
}

fn flip_bytes(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x5A;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_checkpoint_round_trips_bit_for_bit_on_every_rank() {
    let s = Scratch::new("ckpt-roundtrip");
    let dir = s.path("ckpt");
    save_steps(&dir, 3, 3, &[10, 20]);
    assert_eq!(latest(&dir), "step-00000020");
    let st = store(&dir, 3);
    let out = execute(Config::local(3), |ctx| {
        let r = st.restore(ctx)?.expect("a checkpoint");
        let want = state(ctx.rank(), 20);
        assert_eq!(r.step, 20);
        assert_eq!(r.saved_world_size, 3);
        assert!(!r.resharded(3));
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(r.meta, want.meta, "every rank gets its own metadata back");
        assert_eq!(r.replicated.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["layer0.weight", "layer0.bias"]);
        for (got, want) in r.replicated.iter().zip(&want.replicated) {
            assert_eq!((&got.name, &got.shape, bits(got)), (&want.name, &want.shape, bits(want)));
        }
        assert_eq!(r.sharded.len(), 1);
        assert_eq!(bits(&r.sharded[0]), bits(&want.sharded[0]));
        assert_eq!(r.tensor("adam.m").unwrap().shape, vec![ctx.rank() + 1]);
        Ok(r.step)
    })
    .unwrap();
    assert_eq!(out, vec![20; 3]);
    // The layout the documentation promises.
    let d = step_dir(&dir, 20);
    for f in ["MANIFEST.json", "rank-0.safetensors", "rank-0.meta.json", "rank-2.safetensors", "rank-2.meta.json"] {
        assert!(d.join(f).is_file(), "{f} missing in {}", d.display());
    }
    let m = checkpoint::Manifest::read(&d).unwrap();
    assert_eq!((m.step, m.world_size, m.replicated.len(), m.shards.len()), (20, 3, 2, 3));
    let report = checkpoint::verify(&dir).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.restorable, Some(20));
}

#[test]
fn retention_keeps_the_newest_complete_checkpoints_and_removes_leftovers() {
    let s = Scratch::new("ckpt-retention");
    let dir = s.path("ckpt");
    // A leftover of a crashed attempt, and a file that is not gang's.
    std::fs::create_dir_all(dir.join("step-00000003.tmp-a0")).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    save_steps(&dir, 2, 2, &[1, 2, 3, 4, 5]);
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["LATEST", "notes.txt", "step-00000004", "step-00000005"]);
    let infos = checkpoint::list(&dir).unwrap();
    assert_eq!(
        infos.iter().map(|i| (i.step, i.complete, i.latest)).collect::<Vec<_>>(),
        [(4, true, false), (5, true, true)]
    );
    assert!(infos.iter().all(|i| i.world_size == Some(2) && i.bytes > 0 && i.why_incomplete.is_none()));
}

#[test]
fn a_failed_vote_commits_nothing_and_leaves_latest_alone() {
    let s = Scratch::new("ckpt-vote");
    let dir = s.path("ckpt");
    save_steps(&dir, 3, 3, &[1]);
    // Rank 1 cannot write its shard of step 2: its file name is taken by a directory.
    std::fs::create_dir_all(dir.join("step-00000002.tmp-a0").join("rank-1.safetensors")).unwrap();
    let st = store(&dir, 3);
    let errors = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(3), |ctx| {
        let e = st.save(ctx, 2, &state(ctx.rank(), 2)).unwrap_err();
        errors.lock().unwrap().push((
            ctx.rank(),
            e.to_string(),
            matches!(e, Error::Io { .. }),
            matches!(e, Error::Output { .. }),
        ));
        // The gang goes on: the next checkpoint succeeds.
        let r = st.restore(ctx)?.unwrap();
        assert_eq!(r.step, 1);
        Ok(())
    })
    .unwrap();
    let mut errors = errors.into_inner().unwrap();
    errors.sort();
    assert!(errors[1].2, "rank 1 gets its own I/O error: {}", errors[1].1);
    assert!(errors[1].1.contains("rank-1.safetensors"), "{}", errors[1].1);
    for (r, msg, _, output) in [&errors[0], &errors[2]] {
        assert!(output, "rank {r}: {msg}");
        assert!(msg.contains("not committed") && msg.contains("rank 1:") && msg.contains("LATEST"), "rank {r}: {msg}");
    }
    assert_eq!(latest(&dir), "step-00000001");
    assert!(!step_dir(&dir, 2).exists());
    assert!(!dir.join("step-00000002.tmp-a0").join("MANIFEST.json").exists());
    let infos = checkpoint::list(&dir).unwrap();
    let tmp = infos.iter().find(|i| i.name == "step-00000002.tmp-a0").expect("the uncommitted directory is listed");
    assert!(!tmp.complete && tmp.why_incomplete.as_deref().unwrap().contains("not committed"), "{tmp:?}");

    // A malformed state on one rank fails the vote the same way.
    let _ = execute(Config::local(2), |ctx| {
        let mut s = state(ctx.rank(), 3);
        if ctx.rank() == 1 {
            s.sharded[0].shape = vec![99];
        }
        let e = st.save(ctx, 3, &s).unwrap_err();
        if ctx.rank() == 1 {
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        } else {
            assert!(e.to_string().contains("rank 1: invalid argument"), "{e}");
        }
        Ok(())
    });
    assert_eq!(latest(&dir), "step-00000001");

    // The next successful save cleans the leftovers up.
    std::fs::remove_dir_all(dir.join("step-00000002.tmp-a0")).unwrap();
    std::fs::create_dir_all(dir.join("step-00000002.tmp-a0")).unwrap();
    save_steps(&dir, 3, 3, &[4]);
    let names: Vec<String> = checkpoint::list(&dir).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["step-00000001", "step-00000004"]);
}

/// Restores on 2 ranks and returns what rank 0 got.
fn restore2(dir: &Path) -> gang::Result<Option<checkpoint::Restored>> {
    let st = store(dir, 3);
    execute(Config::local(2), |ctx| st.restore(ctx)).map(|mut v| v.remove(0))
}

#[test]
fn a_damaged_shard_in_the_newest_checkpoint_falls_back_to_the_previous() {
    let s = Scratch::new("ckpt-damaged");
    let dir = s.path("ckpt");
    save_steps(&dir, 2, 3, &[1, 2]);
    flip_bytes(&step_dir(&dir, 2).join("rank-1.safetensors"));
    let r = restore2(&dir).unwrap().unwrap();
    assert_eq!(r.step, 1);
    assert_eq!(bits(&r.replicated[0]), bits(&state(0, 1).replicated[0]));
    let why = r.skipped.join("\n");
    assert!(why.contains("step-00000002") && why.contains("rank-1.safetensors") && why.contains("CRC-32"), "{why}");

    let report = checkpoint::verify(&dir).unwrap();
    assert!(!report.is_ok(), "{report}");
    assert_eq!(report.restorable, Some(1));
    let bad = report.checkpoints.iter().find(|c| c.step == 2).unwrap();
    assert!(!bad.ok && bad.problems[0].contains("rank-1.safetensors"), "{bad:?}");
    assert!(report.to_string().contains("DAMAGED"), "{report}");

    // Saving step 2 again replaces the damaged one.
    save_steps(&dir, 2, 3, &[2]);
    assert!(checkpoint::verify(&dir).unwrap().is_ok());
    assert_eq!(restore2(&dir).unwrap().unwrap().step, 2);
}

#[test]
fn a_torn_manifest_or_a_missing_shard_falls_back() {
    let s = Scratch::new("ckpt-torn");
    let dir = s.path("ckpt");
    save_steps(&dir, 2, 4, &[1, 2, 3]);
    // Torn manifest in step 3, missing metadata shard in step 2.
    let m = step_dir(&dir, 3).join("MANIFEST.json");
    let text = std::fs::read(&m).unwrap();
    std::fs::write(&m, &text[..text.len() / 2]).unwrap();
    std::fs::remove_file(step_dir(&dir, 2).join("rank-1.meta.json")).unwrap();
    let r = restore2(&dir).unwrap().unwrap();
    assert_eq!(r.step, 1);
    assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
    assert!(r.skipped[0].contains("step-00000003") && r.skipped[0].contains("torn"), "{:?}", r.skipped);
    assert!(r.skipped[1].contains("step-00000002") && r.skipped[1].contains("missing shard"), "{:?}", r.skipped);
    let infos = checkpoint::list(&dir).unwrap();
    assert_eq!(infos.iter().map(|i| i.complete).collect::<Vec<_>>(), [true, false, false]);
}

#[test]
fn latest_is_the_authority_and_every_checkpoint_damaged_is_an_error() {
    let s = Scratch::new("ckpt-latest");
    let dir = s.path("ckpt");
    assert!(restore2(&dir).unwrap().is_none(), "no store yet: start from scratch");
    save_steps(&dir, 2, 3, &[1, 2]);
    // A crash between the directory rename and the move of LATEST: step 2 is ignored.
    std::fs::write(dir.join("LATEST"), "step-00000001\n").unwrap();
    let r = restore2(&dir).unwrap().unwrap();
    assert_eq!(r.step, 1);
    assert!(r.skipped[0].contains("newer than LATEST"), "{:?}", r.skipped);
    // A damaged pointer: every checkpoint is tried, newest first.
    std::fs::write(dir.join("LATEST"), "garbage").unwrap();
    assert_eq!(restore2(&dir).unwrap().unwrap().step, 2);
    // Everything damaged: an error that says what to do, on every rank.
    flip_bytes(&step_dir(&dir, 1).join("rank-0.safetensors"));
    flip_bytes(&step_dir(&dir, 2).join("rank-0.safetensors"));
    let st = store(&dir, 3);
    let errs = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        // Restore before taking the lock: the peer must reach the collectives too.
        let e = st.restore(ctx).unwrap_err().to_string();
        errs.lock().unwrap().push(e);
        Ok(())
    });
    let errs = errs.into_inner().unwrap();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0], errs[1]);
    assert!(errs[0].contains("no usable checkpoint") && errs[0].contains("gang ckpt verify"), "{}", errs[0]);
}

#[test]
fn replicated_state_restores_onto_other_world_sizes() {
    let s = Scratch::new("ckpt-reshard");
    let dir = s.path("ckpt");
    let st = store(&dir, 2);
    let replicated_only = |rank: usize| {
        let mut s = state(rank, 7);
        s.sharded.clear();
        s
    };
    execute(Config::local(3), |ctx| st.save(ctx, 7, &replicated_only(ctx.rank()))).unwrap();
    for world in [1, 2, 5] {
        let got = execute(Config::local(world), |ctx| {
            let r = st.restore(ctx)?.unwrap();
            assert!(r.resharded(ctx.world()));
            assert_eq!(r.saved_world_size, 3);
            assert!(r.sharded.is_empty());
            assert_eq!(r.meta, replicated_only(0).meta, "rank 0's metadata on a new world size");
            Ok(r.replicated.iter().map(bits).collect::<Vec<_>>())
        })
        .unwrap();
        let want: Vec<Vec<u32>> = replicated_only(0).replicated.iter().map(bits).collect();
        assert!(got.iter().all(|g| *g == want), "world {world}");
    }
}

#[test]
fn sharded_state_onto_another_world_size_is_a_clear_error() {
    let s = Scratch::new("ckpt-sharded");
    let dir = s.path("ckpt");
    save_steps(&dir, 3, 2, &[5]);
    let st = store(&dir, 2);
    let errs = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        let e = st.restore(ctx).unwrap_err();
        assert!(matches!(e, Error::Input { .. }), "{e}");
        errs.lock().unwrap().push(e.to_string());
        Ok(())
    });
    for e in errs.into_inner().unwrap() {
        assert!(
            e.contains("adam.m") && e.contains("same world size") && e.contains("-n 3") && e.contains("step-00000005"),
            "{e}"
        );
    }
}

#[test]
fn checkpoint_directories_and_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("ckpt-perm");
    let dir = s.path("nested/ckpt");
    save_steps(&dir, 2, 2, &[1]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&step_dir(&dir, 1)), 0o700);
    for f in std::fs::read_dir(step_dir(&dir, 1)).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
    }
    assert_eq!(mode(&dir.join("LATEST")) & 0o077, 0);
}

#[test]
fn a_retention_of_zero_is_refused() {
    let e = CheckpointStore::new("/nonexistent", 0).unwrap_err().to_string();
    assert!(e.contains("retention must be at least 1"), "{e}");
}

/// Python: `load_file(path)` of safetensors, or the same read with numpy alone where the
/// safetensors package is missing (`how` says which); needs `json`, `struct`, `numpy as np`.
const LOAD_FILE: &str = r#"try:
    from safetensors.numpy import load_file
    how = "safetensors"
except ImportError:
    how = "numpy"
    dtypes = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1"}
    def load_file(p):
        raw = open(p, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dtypes[v["dtype"]]).reshape(v["shape"])
        return out
"#;

#[test]
fn shards_load_in_python() {
    let s = Scratch::new("ckpt-python");
    let dir = s.path("ckpt");
    save_steps(&dir, 2, 2, &[3]);
    let d = step_dir(&dir, 3);
    let script = r#"
import json, struct, sys
import numpy as np
path0, path1 = sys.argv[1], sys.argv[2]
"#
    .to_owned()
        + LOAD_FILE
        + r#"r0, r1 = load_file(path0), load_file(path1)
print(how, json.dumps({k: [list(v.shape), v.astype("<f4").view("<u4").ravel().tolist()] for k, v in sorted({**r0, **{"r1." + k: v for k, v in r1.items()}}.items())}))
"#;
    let out = python::python()
        .args(["-c", &script])
        .arg(d.join("rank-0.safetensors"))
        .arg(d.join("rank-1.safetensors"))
        .output()
        .expect("python3 is needed for this test (with numpy; the safetensors package is used when installed)");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (how, json) = text.trim().split_once(' ').unwrap();
    eprintln!("loaded with {how}");
    let got: serde_json::Value = serde_json::from_str(json).unwrap();
    let want0 = state(0, 3);
    let want1 = state(1, 3);
    // Compared bit for bit: the f32 values as their IEEE bits.
    let as_json = |t: &Tensor| serde_json::json!([t.shape, bits(t)]);
    assert_eq!(got["layer0.weight"], as_json(&want0.replicated[0]));
    assert_eq!(got["layer0.bias"], as_json(&want0.replicated[1]));
    assert_eq!(got["adam.m"], as_json(&want0.sharded[0]));
    assert_eq!(got["r1.adam.m"], as_json(&want1.sharded[0]));
    assert!(got.get("r1.layer0.weight").is_none(), "replicated tensors are stored by rank 0 only");
}

/// Storage over a bare communicator: a checkpoint store and an output committer on each
/// half of a split Local gang, with no Context, and a barrier section on a Context made
/// from a split.
#[test]
fn stores_and_stages_work_on_the_halves_of_a_split_communicator() {
    use gang::stage::{Manifest, OutputCommitter, OutputFormat};
    use gang::{LocalGroup, OnComm, ReduceOp, RunInfo};
    let s = Scratch::new("split-store");
    let group = LocalGroup::new(4);
    std::thread::scope(|scope| {
        for member in group.members() {
            let root = s.0.clone();
            scope.spawn(move || {
                let world = member.into_comm();
                let me = world.rank();
                let half = world.split(Some((me % 2) as u32), me as i32).unwrap().expect("a color was given");
                let run = RunInfo::new(0);
                let on = OnComm { comm: &half, run: &run };
                let store = CheckpointStore::new(root.join(format!("ckpt-{}", me % 2)), 2).unwrap();
                let state = State::new()
                    .with_replicated(Tensor::vector("w", vec![(me % 2) as f32; 3]))
                    .with_sharded(Tensor::vector("mine", vec![me as f32]));
                store.save(&on, 5, &state).unwrap();
                let r = store.restore(&on).unwrap().expect("the checkpoint just saved");
                assert_eq!((r.step, r.saved_world_size), (5, 2));
                assert_eq!(r.sharded[0].data, vec![me as f32]);
                let out = root.join(format!("out-{}", me % 2));
                let c = OutputCommitter::begin(&on, &out, OutputFormat::Ipc { zstd: false }, false, "half").unwrap();
                let batch = arrow_array::RecordBatch::try_from_iter([(
                    "x",
                    std::sync::Arc::new(arrow_array::Int64Array::from(vec![me as i64; 2])) as _,
                )])
                .unwrap();
                c.write_partition(half.rank(), &batch.schema(), [Ok(batch)]).unwrap();
                c.finish(&on, half.size()).unwrap();
                let m = Manifest::read(&out).unwrap();
                assert_eq!((m.partitions.len(), m.total_rows), (2, 4));
                // A barrier section over the half, through a Context made from it.
                let ctx = gang::Context::from_comm(half, run.clone()).unwrap();
                let sum = ctx.barrier_section("half", |g| g.comm().allreduce_scalar(me as u64, ReduceOp::Sum)).unwrap();
                assert_eq!(sum, if me % 2 == 0 { 2 } else { 4 });
            });
        }
    });
}

/// A simulation's own buffers of every dtype, as rank `rank` holds them at `step`:
/// replicated `rho` (f64, 2x3), `ids` (i32), `blob` (raw bytes); sharded `u` (f64, rank + 2
/// values), `cursor` (an i64 scalar), `m` (f32).
#[derive(Debug, Clone, PartialEq)]
struct Fields {
    rho: Vec<f64>,
    ids: Vec<i32>,
    blob: Vec<u8>,
    u: Vec<f64>,
    cursor: Vec<i64>,
    m: Vec<f32>,
}

impl Fields {
    fn at(rank: usize, step: u64) -> Fields {
        let s = step as f64;
        let mut rho: Vec<f64> = (0..4).map(|i| s * 0.1 + i as f64 / 3.0).collect();
        rho.extend([-0.0, f64::from_bits(0x7ff8_0000_dead_beef)]);
        Fields {
            rho,
            ids: vec![-1, i32::MAX, step as i32, i32::MIN],
            blob: vec![b'r', 0, 0xFF, step as u8, 0x80],
            u: (0..rank + 2).map(|i| rank as f64 * 1e300 + i as f64 + s + f64::MIN_POSITIVE).collect(),
            cursor: vec![-(step as i64) * 1_000_000_007 - rank as i64],
            m: vec![rank as f32 + 0.5; 3],
        }
    }

    /// Buffers of the same sizes as rank `rank`'s, filled with a byte pattern.
    fn blank(rank: usize) -> Fields {
        let f = Fields::at(rank, 0);
        Fields {
            rho: vec![f64::from_bits(0x7777_7777_7777_7777); f.rho.len()],
            ids: vec![0x7777_7777; f.ids.len()],
            blob: vec![0x77; f.blob.len()],
            u: vec![f64::from_bits(0x7777_7777_7777_7777); f.u.len()],
            cursor: vec![0x7777_7777_7777_7777; 1],
            m: vec![f32::from_bits(0x7777_7777); f.m.len()],
        }
    }

    fn meta(rank: usize, step: u64) -> Meta {
        Meta { epoch: step, data_cursor: rank as u64, extra: serde_json::json!({ "rank": rank }), ..Meta::default() }
    }

    fn save(&self, store: &CheckpointStore, ctx: &gang::Context, step: u64) -> gang::Result<()> {
        let replicated = [
            TensorRef::from_slice("rho", vec![2, 3], &self.rho)?,
            TensorRef::vector("ids", &self.ids)?,
            TensorRef::vector("blob", &self.blob)?,
        ];
        let sharded = [
            TensorRef::vector("u", &self.u)?,
            TensorRef::from_slice("cursor", vec![], &self.cursor)?,
            TensorRef::vector("m", &self.m)?,
        ];
        store.save_refs(ctx, step, &Fields::meta(ctx.rank(), step), &replicated, &sharded)
    }

    /// Restores into these buffers, the targets in another order than saved.
    fn restore(&mut self, store: &CheckpointStore, ctx: &gang::Context) -> gang::Result<Option<RestoredInPlace>> {
        let mut targets = [
            TensorMut::vector("m", &mut self.m)?,
            TensorMut::from_slice("cursor", vec![], &mut self.cursor)?,
            TensorMut::vector("blob", &mut self.blob)?,
            TensorMut::from_slice("rho", vec![2, 3], &mut self.rho)?,
            TensorMut::vector("u", &mut self.u)?,
            TensorMut::vector("ids", &mut self.ids)?,
        ];
        store.restore_into(ctx, &mut targets)
    }

    /// Every value as its bits, for comparisons that see NaN payloads and -0.0.
    fn bits(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.rho.iter().chain(&self.u).map(|x| x.to_bits()).collect();
        v.extend(self.ids.iter().map(|&x| x as u32 as u64));
        v.extend(self.blob.iter().map(|&x| x as u64));
        v.extend(self.cursor.iter().map(|&x| x as u64));
        v.extend(self.m.iter().map(|x| x.to_bits() as u64));
        v
    }
}

/// Saves `Fields::at(rank, step)` for each of `steps` on `world` ranks.
fn save_fields(dir: &Path, world: usize, steps: &[u64]) {
    let st = store(dir, 3);
    execute(Config::local(world), |ctx| {
        for &step in steps {
            Fields::at(ctx.rank(), step).save(&st, ctx, step)?;
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn buffers_of_every_dtype_round_trip_bit_for_bit_at_1_and_3_ranks() {
    let s = Scratch::new("ckpt-refs");
    for world in [1, 3] {
        let dir = s.path(&format!("ckpt-{world}"));
        save_fields(&dir, world, &[4, 8]);
        let st = store(&dir, 3);
        execute(Config::local(world), |ctx| {
            let rank = ctx.rank();
            let mut f = Fields::blank(rank);
            let r = f.restore(&st, ctx)?.expect("a checkpoint");
            assert_eq!((r.step, r.saved_world_size, r.resharded(world)), (8, world, false));
            assert!(r.skipped.is_empty(), "{:?}", r.skipped);
            assert_eq!(r.meta, Fields::meta(rank, 8), "this rank's own metadata");
            assert_eq!(r.dir, step_dir(&dir, 8));
            assert_eq!(f.bits(), Fields::at(rank, 8).bits(), "world {world} rank {rank}");
            Ok(())
        })
        .unwrap();
        let report = checkpoint::verify(&dir).unwrap();
        assert!(report.is_ok(), "{report}");
    }
}

#[test]
fn a_damaged_newest_checkpoint_of_buffers_falls_back_and_all_damaged_says_the_buffers_were_overwritten() {
    let s = Scratch::new("ckpt-refs-damaged");
    let dir = s.path("ckpt");
    save_fields(&dir, 2, &[1, 2]);
    // In the data section of rank 1's shard: found only by the checksum, after the read.
    flip_bytes(&step_dir(&dir, 2).join("rank-1.safetensors"));
    let st = store(&dir, 3);
    execute(Config::local(2), |ctx| {
        let mut f = Fields::blank(ctx.rank());
        let r = f.restore(&st, ctx)?.unwrap();
        assert_eq!(r.step, 1);
        let why = r.skipped.join("\n");
        assert!(why.contains("step-00000002") && why.contains("rank-1.safetensors") && why.contains("CRC-32"), "{why}");
        assert_eq!(f.bits(), Fields::at(ctx.rank(), 1).bits(), "every byte from the older checkpoint");
        Ok(())
    })
    .unwrap();

    flip_bytes(&step_dir(&dir, 1).join("rank-0.safetensors"));
    let errs = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        let e = Fields::blank(ctx.rank()).restore(&st, ctx).unwrap_err();
        assert!(matches!(e, Error::Input { .. }), "{e}");
        errs.lock().unwrap().push(e.to_string());
        Ok(())
    });
    let errs = errs.into_inner().unwrap();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0], errs[1]);
    assert!(
        errs[0].contains("no usable checkpoint")
            && errs[0].contains("partly overwritten")
            && errs[0].contains("no consistent state"),
        "{}",
        errs[0]
    );
}

/// Runs `restore_into` on 2 ranks with the targets `targets(rank, fields, scratch)` makes
/// (`scratch`: 48 spare bytes); returns each rank's error and whether its buffers were left
/// untouched.
fn restore_mismatched(
    dir: &Path,
    targets: impl for<'b> Fn(usize, &'b mut Fields, &'b mut [u8]) -> Vec<TensorMut<'b>> + Sync,
) -> Vec<(Error, bool)> {
    let st = store(dir, 3);
    let out = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        let (mut f, mut scratch) = (Fields::blank(ctx.rank()), vec![0x77u8; 48]);
        let e = st.restore_into(ctx, &mut targets(ctx.rank(), &mut f, &mut scratch)).unwrap_err();
        let untouched = f.bits().iter().all(|&b| [0x77, 0x7777_7777, 0x7777_7777_7777_7777].contains(&b))
            && scratch.iter().all(|&b| b == 0x77);
        out.lock().unwrap().push((ctx.rank(), e, untouched));
        Ok(())
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(r, _, _)| *r);
    out.into_iter().map(|(_, e, untouched)| (e, untouched)).collect()
}

/// Targets for every tensor `Fields` saves.
fn all_targets(f: &mut Fields) -> Vec<TensorMut<'_>> {
    vec![
        TensorMut::from_slice("rho", vec![2, 3], &mut f.rho).unwrap(),
        TensorMut::vector("ids", &mut f.ids).unwrap(),
        TensorMut::vector("blob", &mut f.blob).unwrap(),
        TensorMut::vector("u", &mut f.u).unwrap(),
        TensorMut::from_slice("cursor", vec![], &mut f.cursor).unwrap(),
        TensorMut::vector("m", &mut f.m).unwrap(),
    ]
}

#[test]
fn targets_of_another_dtype_or_shape_or_name_are_a_clear_error_and_stay_untouched() {
    let s = Scratch::new("ckpt-refs-mismatch");
    let dir = s.path("ckpt");
    save_fields(&dir, 2, &[3]);
    let check = |errs: Vec<(Error, bool)>, wants: &[&str]| {
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0.to_string(), errs[1].0.to_string(), "every rank gets the same error");
        for (e, untouched) in &errs {
            assert!(matches!(e, Error::Input { .. }), "{e}");
            let msg = e.to_string();
            for w in wants {
                assert!(msg.contains(w), "{w:?} not in: {msg}");
            }
            assert!(untouched, "the buffers were written before the mismatch was found: {msg}");
        }
    };

    // Rank 1 takes the replicated f64 field for f32, in as many bytes (2x3 f64 = 3x4 f32):
    // only the dtype tells them apart.
    let errs = restore_mismatched(&dir, |rank, f, scratch| {
        let mut t = all_targets(f);
        if rank == 1 {
            t[0] = TensorMut::new("rho", Dtype::F32, vec![3, 4], scratch).unwrap();
        }
        t
    });
    check(errs, &["step-00000003", "tensor \"rho\"", "rank 1", "saved as F64 [2, 3]", "target is F32 [3, 4]"]);

    // Rank 0 has one value too many in its sharded f64 field.
    let errs = restore_mismatched(&dir, |rank, f, _| {
        if rank == 0 {
            f.u.push(f64::from_bits(0x7777_7777_7777_7777));
        }
        all_targets(f)
    });
    check(errs, &["step-00000003", "tensor \"u\"", "rank 0", "saved as F64 [2]", "target is F64 [3]"]);

    // A target that was never saved, and a saved tensor without a target.
    let errs = restore_mismatched(&dir, |_, f, scratch| {
        let mut t = all_targets(f);
        t.push(TensorMut::vector("extra", scratch).unwrap());
        t
    });
    check(errs, &["tensor \"extra\"", "rank 0", "no tensor of this name was saved"]);
    let errs = restore_mismatched(&dir, |_, f, _| {
        let mut t = all_targets(f);
        t.remove(2);
        t
    });
    check(errs, &["tensor \"blob\"", "rank 0", "no target was given"]);

    // The f32 restore() of a checkpoint of other dtypes says what to use instead.
    let st = store(&dir, 3);
    let errs = std::sync::Mutex::new(Vec::new());
    let _ = execute(Config::local(2), |ctx| {
        let e = st.restore(ctx).unwrap_err();
        errs.lock().unwrap().push(e.to_string());
        Ok(())
    });
    let errs = errs.into_inner().unwrap();
    assert_eq!(errs.len(), 2);
    for e in errs {
        assert!(e.contains("tensor \"rho\"") && e.contains("F64") && e.contains("restore_into"), "{e}");
    }
}

#[test]
fn an_f64_field_loads_in_python_as_float64() {
    let s = Scratch::new("ckpt-refs-python");
    let dir = s.path("ckpt");
    save_fields(&dir, 2, &[5]);
    let script = r#"
import json, struct, sys
import numpy as np
"#
    .to_owned()
        + LOAD_FILE
        + r#"t = load_file(sys.argv[1])
as_ints = lambda v: v.view("<u%d" % v.dtype.itemsize).ravel().tolist() if v.dtype.kind == "f" else v.ravel().tolist()
print(how, json.dumps({k: [str(v.dtype), list(v.shape), as_ints(v)] for k, v in t.items()}))
"#;
    let out = python::python()
        .args(["-c", &script])
        .arg(step_dir(&dir, 5).join("rank-1.safetensors"))
        .output()
        .expect("python3 is needed for this test (with numpy; the safetensors package is used when installed)");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (how, json) = text.trim().split_once(' ').unwrap();
    eprintln!("loaded with {how}");
    let got: serde_json::Value = serde_json::from_str(json).unwrap();
    let want = Fields::at(1, 5);
    let u_bits: Vec<u64> = want.u.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got["u"], serde_json::json!(["float64", [3], u_bits]));
    assert_eq!(got["cursor"], serde_json::json!(["int64", [], want.cursor]));
    let m_bits: Vec<u32> = want.m.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got["m"], serde_json::json!(["float32", [3], m_bits]));
    assert!(got.get("rho").is_none(), "replicated tensors are stored by rank 0 only");
}
