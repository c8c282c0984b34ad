//! A program that owns MPI and runs two independent gangs in it: it initializes MPI itself
//! (rsmpi), splits `MPI_COMM_WORLD` into its even and odd ranks, and hands each half to
//! gang with [`gang::init_from_comm`]. Each half runs collectives, a barrier section and a
//! checkpoint of its own, then MPI is finalized by the program (gang never finalizes MPI
//! it did not initialize). The tests start it with `mpirun -n 4`.
//!
//! `adopt_halves DIR`: half `h` keeps its checkpoints in `DIR/half-h`; every rank prints
//! one line `world W half H rank R of N sum S gathered G restored T`.

use gang::checkpoint::{CheckpointStore, State, Tensor};
use gang::mpi::collective::CommunicatorCollectives;
use gang::mpi::topology::{Color, Communicator};
use gang::ReduceOp;

fn main() -> gang::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: adopt_halves DIR"));
    let universe = gang::mpi::initialize().expect("MPI_Init");
    let world = universe.world();
    let world_rank = world.rank() as usize;
    let half_index = world_rank % 2;
    let half = world.split_by_color(Color::with_value(half_index as i32)).expect("a color was given");
    let line = {
        let ctx = gang::init_from_comm(&half)?;
        // Collectives over this half only.
        let sum = ctx.comm().allreduce_scalar(world_rank as u64, ReduceOp::Sum)?;
        let gathered = ctx.comm().allgather_bytes(&(world_rank as u64).to_le_bytes())?;
        let gathered: Vec<u64> = gathered.iter().map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect();
        // A barrier section with a checkpoint, then a restore of it.
        let store = CheckpointStore::new(dir.join(format!("half-{half_index}")), 2)?;
        let restored = ctx.barrier_section_with_checkpoints("halves", &store, |g| {
            let w = Tensor::vector("w", vec![sum as f32; 4]);
            let mine = Tensor::vector("mine", vec![world_rank as f32]);
            g.checkpoint(7, &State::new().with_replicated(w).with_sharded(mine))?;
            let r = g.restore()?.expect("the checkpoint just written");
            assert_eq!(r.sharded[0].data, vec![world_rank as f32], "this rank's own shard");
            Ok(r.step)
        })?;
        format!(
            "world {world_rank} half {half_index} rank {} of {} sum {sum} gathered {gathered:?} restored {restored}",
            ctx.rank(),
            ctx.world()
        )
        // The context (and its duplicate of `half`) is dropped here, while MPI is alive.
    };
    println!("{line}");
    // The program's own MPI still works after gang is done with its communicator.
    world.barrier();
    drop(half); // rsmpi frees it: before MPI_Finalize
    drop(universe); // MPI_Finalize, by the program
    Ok(())
}
