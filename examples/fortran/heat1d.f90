! heat1d: 1-D heat diffusion on N points split across the MPI ranks (halo exchange with
! MPI_Sendrecv), with libgang on its own communicator: a surrogate (an MLP from x to u)
! trained in situ every K steps, Parquet snapshots every P steps (committed exactly once),
! and checkpoints of the field every C steps with a restart from the newest.
!
!   mpifort -c $(pkg-config --variable=includedir gang)/gang.f90
!   mpifort heat1d.f90 gang.o $(pkg-config --libs gang) -o heat1d
!   gang run -n 2 -- ./heat1d heat1d-out
!
! Argument: the output directory (default heat1d-out). At the end rank 0 prints
! "field sum" of the whole field and the surrogate's first and last loss.
program heat1d
    use mpi_f08
    use gang
    use, intrinsic :: iso_c_binding
    implicit none
    integer, parameter :: n = 4096, steps = 400, train_every = 20, snap_every = 100, ckpt_every = 50
    type(c_ptr) :: g, ck, tr
    integer :: rank, nranks, i0, nloc, s, first, up, down, i, step
    real(c_double), allocatable, target :: u(:), un(:)
    real(c_float), allocatable, target :: x(:, :), y(:)
    real(c_double), allocatable, target :: snap(:, :)
    real(c_double) :: loss, first_loss, total(1)
    logical :: found, written
    character(len=256) :: out
    character(len=512) :: path

    out = 'heat1d-out'
    if (command_argument_count() >= 1) call get_command_argument(1, out)
    call MPI_Init()
    call MPI_Comm_rank(MPI_COMM_WORLD, rank)
    call MPI_Comm_size(MPI_COMM_WORLD, nranks)
    i0 = n * rank / nranks
    nloc = n * (rank + 1) / nranks - i0
    allocate(u(0:nloc + 1), un(0:nloc + 1), x(nloc, 1), y(nloc), snap(nloc, 3))
    u = 0
    if (rank == 0) u(1) = 1.0d0
    up = merge(rank - 1, MPI_PROC_NULL, rank > 0)
    down = merge(rank + 1, MPI_PROC_NULL, rank < nranks - 1)
    do i = 1, nloc
        x(i, 1) = real(i0 + i - 1, c_float) / real(n - 1, c_float)
    end do

    call check(gang_init(MPI_COMM_WORLD, g))
    call check(gang_checkpoint_new(g, trim(out) // '/checkpoints', 2, ck))
    call check(gang_checkpoint_region(ck, 'u', u, .true.))
    call check(gang_trainer_new(g, 1, 'model=mlp:16 optimizer=adam lr=0.01 batch=256 seed=3', tr))
    call check(gang_trainer_checkpoint(tr, ck))
    first = 1
    step = 0
    call check(gang_restart(ck, step, found))
    if (found) then
        first = step + 1
        if (rank == 0) print '(a, i0)', 'heat1d: restarted from the checkpoint of step ', step
    end if

    first_loss = -1
    loss = 0
    do s = first, steps
        call MPI_Sendrecv(u(1), 1, MPI_DOUBLE_PRECISION, up, 0, u(nloc + 1), 1, MPI_DOUBLE_PRECISION, down, 0, &
            MPI_COMM_WORLD, MPI_STATUS_IGNORE)
        call MPI_Sendrecv(u(nloc), 1, MPI_DOUBLE_PRECISION, down, 1, u(0), 1, MPI_DOUBLE_PRECISION, up, 1, &
            MPI_COMM_WORLD, MPI_STATUS_IGNORE)
        do i = 1, nloc
            if (i0 + i - 1 == 0 .or. i0 + i - 1 == n - 1) then
                un(i) = u(i)
            else
                un(i) = u(i) + 0.4d0 * (u(i - 1) - 2 * u(i) + u(i + 1))
            end if
        end do
        u(1:nloc) = un(1:nloc)
        call check(gang_step(g, s, steps))
        if (mod(s, train_every) == 0) then
            y = real(u(1:nloc), c_float)
            call check(gang_trainer_step(tr, x, y, loss))
            if (first_loss < 0) first_loss = loss
        end if
        if (mod(s, snap_every) == 0) then
            snap(:, 1) = s
            do i = 1, nloc
                snap(i, 2) = i0 + i - 1
            end do
            snap(:, 3) = u(1:nloc)
            write(path, '(a, a, i6.6)') trim(out), '/snapshots/step-', s
            call check(gang_write_parquet(g, trim(path), [character(len=4) :: 'step', 'i', 'u'], snap, written))
        end if
        if (mod(s, ckpt_every) == 0) call check(gang_checkpoint(ck, s))
    end do

    total(1) = sum(u(1:nloc))
    call check(gang_allreduce(g, total, GANG_SUM))
    if (rank == 0) then
        print '(a, es23.16)', 'heat1d: field sum ', total(1)
        print '(a, es12.5, a, es12.5)', 'heat1d: surrogate loss first ', first_loss, ' last ', loss
    end if
    call check(gang_trainer_save(tr, trim(out) // '/surrogate.safetensors'))
    call check(gang_checkpoint_free(ck))
    call check(gang_trainer_free(tr))
    call check(gang_finalize(g))
    call MPI_Finalize()

contains

    subroutine check(code)
        integer(c_int), intent(in) :: code
        character(len=1024) :: msg
        if (code /= GANG_OK) then
            call gang_last_error(g, msg)
            call gang_fail(g, msg)
        end if
    end subroutine
end program heat1d
