! The Fortran module of libgang: iso_c_binding interfaces to gang.h, with Fortran
! strings (trimmed, any length), integer and TYPE(MPI_Comm) communicators, and arrays.
! Compile it with the program (it is installed beside gang.h):
!
!   mpifort -c $(pkg-config --variable=includedir gang)/gang.f90
!   mpifort heat1d.f90 gang.o $(pkg-config --libs gang) -o heat1d
!
! Every function returns GANG_OK (0) or an error code; gang_last_error(g, msg) fills msg.
! Arrays registered as checkpoint regions are kept by gang (give them the TARGET
! attribute and keep them allocated until gang_checkpoint_free); everything else is
! read or written during the call only.
module gang
    use, intrinsic :: iso_c_binding
    use mpi_f08, only: MPI_Comm
    implicit none
    private

    integer(c_int), parameter, public :: GANG_OK = 0, GANG_ERR_ARGUMENT = 1, GANG_ERR_STATE = 2, &
        GANG_ERR_MPI = 3, GANG_ERR_PEER = 4, GANG_ERR_IO = 5, GANG_ERR_INPUT = 6, &
        GANG_ERR_ENVIRONMENT = 7, GANG_ERR_INTERNAL = 8
    integer(c_int), parameter, public :: GANG_SUM = 0, GANG_MIN = 1, GANG_MAX = 2
    integer(c_int), parameter, public :: GANG_F32 = 1, GANG_F64 = 2, GANG_I32 = 3, GANG_I64 = 4, GANG_U8 = 5
    integer(c_int), parameter, public :: GANG_ROW_MAJOR = 0, GANG_COLUMN_MAJOR = 1

    public :: gang_init, gang_finalize, gang_rank, gang_size, gang_attempt, gang_barrier, gang_allreduce, &
        gang_step, gang_fail, gang_last_error, gang_checkpoint_new, gang_checkpoint_region, gang_checkpoint, &
        gang_restart, gang_checkpoint_free, gang_trainer_new, gang_trainer_step, gang_trainer_predict, &
        gang_trainer_save, gang_trainer_free, gang_trainer_checkpoint, gang_write_parquet

    interface gang_init
        module procedure gang_init_int, gang_init_f08
    end interface
    interface gang_allreduce
        module procedure gang_allreduce_r4, gang_allreduce_r8
    end interface
    interface gang_checkpoint_region
        module procedure region_r8_1, region_r8_2, region_r4_1
    end interface

    interface
        integer(c_int) function c_init_f(comm, g) bind(c, name='gang_init_f')
            import :: c_int, c_ptr
            integer(c_int), value :: comm
            type(c_ptr) :: g
        end function
        integer(c_int) function c_finalize(g) bind(c, name='gang_finalize')
            import :: c_int, c_ptr
            type(c_ptr), value :: g
        end function
        integer(c_int) function c_rank(g, r) bind(c, name='gang_rank')
            import :: c_int, c_ptr
            type(c_ptr), value :: g
            integer(c_int) :: r
        end function
        integer(c_int) function c_size(g, s) bind(c, name='gang_size')
            import :: c_int, c_ptr
            type(c_ptr), value :: g
            integer(c_int) :: s
        end function
        integer(c_int) function c_attempt(g, a) bind(c, name='gang_attempt')
            import :: c_int, c_ptr
            type(c_ptr), value :: g
            integer(c_int) :: a
        end function
        integer(c_int) function c_barrier(g) bind(c, name='gang_barrier')
            import :: c_int, c_ptr
            type(c_ptr), value :: g
        end function
        integer(c_int) function c_allreduce_f32(g, buf, count, op) bind(c, name='gang_allreduce_f32')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: g, buf
            integer(c_int64_t), value :: count
            integer(c_int), value :: op
        end function
        integer(c_int) function c_allreduce_f64(g, buf, count, op) bind(c, name='gang_allreduce_f64')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: g, buf
            integer(c_int64_t), value :: count
            integer(c_int), value :: op
        end function
        integer(c_int) function c_step(g, step, total) bind(c, name='gang_step')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: g
            integer(c_int64_t), value :: step, total
        end function
        integer(c_int) function c_fail(g, msg) bind(c, name='gang_fail')
            import :: c_int, c_ptr, c_char
            type(c_ptr), value :: g
            character(kind=c_char) :: msg(*)
        end function
        integer(c_int) function c_last_error_copy(g, buf, len, needed) bind(c, name='gang_last_error_copy')
            import :: c_int, c_ptr, c_char, c_size_t
            type(c_ptr), value :: g
            character(kind=c_char) :: buf(*)
            integer(c_size_t), value :: len
            type(c_ptr), value :: needed
        end function
        integer(c_int) function c_checkpoint_new(g, dir, keep, ck) bind(c, name='gang_checkpoint_new')
            import :: c_int, c_ptr, c_char
            type(c_ptr), value :: g
            character(kind=c_char) :: dir(*)
            integer(c_int), value :: keep
            type(c_ptr) :: ck
        end function
        integer(c_int) function c_checkpoint_region(ck, name, data, dtype, ndim, shape, sharded) &
                bind(c, name='gang_checkpoint_region')
            import :: c_int, c_ptr, c_char, c_int64_t
            type(c_ptr), value :: ck, data
            character(kind=c_char) :: name(*)
            integer(c_int), value :: dtype, ndim, sharded
            integer(c_int64_t) :: shape(*)
        end function
        integer(c_int) function c_checkpoint(ck, step) bind(c, name='gang_checkpoint')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: ck
            integer(c_int64_t), value :: step
        end function
        integer(c_int) function c_restart(ck, step, found) bind(c, name='gang_restart')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: ck
            integer(c_int64_t) :: step
            integer(c_int) :: found
        end function
        integer(c_int) function c_checkpoint_free(ck) bind(c, name='gang_checkpoint_free')
            import :: c_int, c_ptr
            type(c_ptr), value :: ck
        end function
        integer(c_int) function c_trainer_new(g, features, config, tr) bind(c, name='gang_trainer_new')
            import :: c_int, c_ptr, c_char, c_int64_t
            type(c_ptr), value :: g
            integer(c_int64_t), value :: features
            character(kind=c_char) :: config(*)
            type(c_ptr) :: tr
        end function
        integer(c_int) function c_trainer_step(tr, x, rows, cols, layout, y, classes, loss) &
                bind(c, name='gang_trainer_step')
            import :: c_int, c_ptr, c_int64_t, c_double
            type(c_ptr), value :: tr, x, y, classes
            integer(c_int64_t), value :: rows, cols
            integer(c_int), value :: layout
            real(c_double) :: loss
        end function
        integer(c_int) function c_trainer_predict(tr, x, rows, cols, layout, out, out_len) &
                bind(c, name='gang_trainer_predict')
            import :: c_int, c_ptr, c_int64_t
            type(c_ptr), value :: tr, x, out
            integer(c_int64_t), value :: rows, cols, out_len
            integer(c_int), value :: layout
        end function
        integer(c_int) function c_trainer_save(tr, path) bind(c, name='gang_trainer_save')
            import :: c_int, c_ptr, c_char
            type(c_ptr), value :: tr
            character(kind=c_char) :: path(*)
        end function
        integer(c_int) function c_trainer_checkpoint(tr, ck) bind(c, name='gang_trainer_checkpoint')
            import :: c_int, c_ptr
            type(c_ptr), value :: tr, ck
        end function
        integer(c_int) function c_trainer_free(tr) bind(c, name='gang_trainer_free')
            import :: c_int, c_ptr
            type(c_ptr), value :: tr
        end function
        integer(c_int) function c_write_parquet(g, dir, rows, ncols, names, dtypes, columns, written) &
                bind(c, name='gang_write_parquet')
            import :: c_int, c_ptr, c_char, c_int64_t
            type(c_ptr), value :: g
            character(kind=c_char) :: dir(*)
            integer(c_int64_t), value :: rows
            integer(c_int), value :: ncols
            type(c_ptr) :: names(*), columns(*)
            integer(c_int) :: dtypes(*)
            integer(c_int) :: written
        end function
    end interface

contains

    ! A Fortran string as a NUL-terminated C string (trailing blanks dropped).
    pure function cstr(s) result(c)
        character(len=*), intent(in) :: s
        character(kind=c_char, len=len_trim(s) + 1) :: c
        c = trim(s) // c_null_char
    end function

    integer(c_int) function gang_init_int(comm, g) result(rc)
        integer, intent(in) :: comm
        type(c_ptr), intent(out) :: g
        rc = c_init_f(int(comm, c_int), g)
    end function

    integer(c_int) function gang_init_f08(comm, g) result(rc)
        type(MPI_Comm), intent(in) :: comm
        type(c_ptr), intent(out) :: g
        rc = c_init_f(int(comm%MPI_VAL, c_int), g)
    end function

    integer(c_int) function gang_finalize(g) result(rc)
        type(c_ptr), intent(inout) :: g
        rc = c_finalize(g)
        if (rc == GANG_OK) g = c_null_ptr
    end function

    integer(c_int) function gang_rank(g, r) result(rc)
        type(c_ptr), intent(in) :: g
        integer, intent(out) :: r
        integer(c_int) :: v
        rc = c_rank(g, v)
        r = v
    end function

    integer(c_int) function gang_size(g, s) result(rc)
        type(c_ptr), intent(in) :: g
        integer, intent(out) :: s
        integer(c_int) :: v
        rc = c_size(g, v)
        s = v
    end function

    integer(c_int) function gang_attempt(g, a) result(rc)
        type(c_ptr), intent(in) :: g
        integer, intent(out) :: a
        integer(c_int) :: v
        rc = c_attempt(g, v)
        a = v
    end function

    integer(c_int) function gang_barrier(g) result(rc)
        type(c_ptr), intent(in) :: g
        rc = c_barrier(g)
    end function

    integer(c_int) function gang_allreduce_r4(g, buf, op) result(rc)
        type(c_ptr), intent(in) :: g
        real(c_float), contiguous, target, intent(inout) :: buf(:)
        integer(c_int), intent(in) :: op
        rc = c_allreduce_f32(g, c_loc(buf), size(buf, kind=c_int64_t), op)
    end function

    integer(c_int) function gang_allreduce_r8(g, buf, op) result(rc)
        type(c_ptr), intent(in) :: g
        real(c_double), contiguous, target, intent(inout) :: buf(:)
        integer(c_int), intent(in) :: op
        rc = c_allreduce_f64(g, c_loc(buf), size(buf, kind=c_int64_t), op)
    end function

    integer(c_int) function gang_step(g, step, total) result(rc)
        type(c_ptr), intent(in) :: g
        integer, intent(in) :: step, total
        rc = c_step(g, int(step, c_int64_t), int(total, c_int64_t))
    end function

    ! Stops the whole gang with msg (recorded for `gang run`). Does not return.
    subroutine gang_fail(g, msg)
        type(c_ptr), intent(in) :: g
        character(len=*), intent(in) :: msg
        integer(c_int) :: rc
        rc = c_fail(g, cstr(msg))
    end subroutine

    ! The message of the last failed call on g (or, for a null g, on this thread), cut to
    ! len(msg) and padded with blanks.
    subroutine gang_last_error(g, msg)
        type(c_ptr), intent(in) :: g
        character(len=*), intent(out) :: msg
        character(kind=c_char) :: buf(len(msg) + 1)
        integer(c_int) :: rc
        integer :: i
        rc = c_last_error_copy(g, buf, int(len(msg) + 1, c_size_t), c_null_ptr)
        msg = ' '
        do i = 1, len(msg)
            if (buf(i) == c_null_char) exit
            msg(i:i) = buf(i)
        end do
    end subroutine

    integer(c_int) function gang_checkpoint_new(g, dir, keep, ck) result(rc)
        type(c_ptr), intent(in) :: g
        character(len=*), intent(in) :: dir
        integer, intent(in) :: keep
        type(c_ptr), intent(out) :: ck
        rc = c_checkpoint_new(g, cstr(dir), int(keep, c_int), ck)
    end function

    ! A 1-D real(8) region; sharded: each rank's own part (.true.) or the same on every rank.
    integer(c_int) function region_r8_1(ck, name, a, sharded) result(rc)
        type(c_ptr), intent(in) :: ck
        character(len=*), intent(in) :: name
        real(c_double), contiguous, target, intent(inout) :: a(:)
        logical, intent(in) :: sharded
        integer(c_int64_t) :: shape(1)
        shape(1) = size(a, kind=c_int64_t)
        rc = c_checkpoint_region(ck, cstr(name), c_loc(a), GANG_F64, 1_c_int, shape, merge(1_c_int, 0_c_int, sharded))
    end function

    ! A 2-D real(8) region a(n1, n2): saved with the C-order shape {n2, n1}, so numpy reads
    ! the array Fortran indexes as a(i, j) as arr[j - 1, i - 1].
    integer(c_int) function region_r8_2(ck, name, a, sharded) result(rc)
        type(c_ptr), intent(in) :: ck
        character(len=*), intent(in) :: name
        real(c_double), contiguous, target, intent(inout) :: a(:, :)
        logical, intent(in) :: sharded
        integer(c_int64_t) :: shape(2)
        shape = [size(a, 2, kind=c_int64_t), size(a, 1, kind=c_int64_t)]
        rc = c_checkpoint_region(ck, cstr(name), c_loc(a), GANG_F64, 2_c_int, shape, merge(1_c_int, 0_c_int, sharded))
    end function

    integer(c_int) function region_r4_1(ck, name, a, sharded) result(rc)
        type(c_ptr), intent(in) :: ck
        character(len=*), intent(in) :: name
        real(c_float), contiguous, target, intent(inout) :: a(:)
        logical, intent(in) :: sharded
        integer(c_int64_t) :: shape(1)
        shape(1) = size(a, kind=c_int64_t)
        rc = c_checkpoint_region(ck, cstr(name), c_loc(a), GANG_F32, 1_c_int, shape, merge(1_c_int, 0_c_int, sharded))
    end function

    integer(c_int) function gang_checkpoint(ck, step) result(rc)
        type(c_ptr), intent(in) :: ck
        integer, intent(in) :: step
        rc = c_checkpoint(ck, int(step, c_int64_t))
    end function

    ! found is .true. and step the checkpoint's step when one was restored.
    integer(c_int) function gang_restart(ck, step, found) result(rc)
        type(c_ptr), intent(in) :: ck
        integer, intent(inout) :: step
        logical, intent(out) :: found
        integer(c_int64_t) :: s
        integer(c_int) :: f
        s = step
        rc = c_restart(ck, s, f)
        found = f /= 0
        if (found) step = int(s)
    end function

    integer(c_int) function gang_checkpoint_free(ck) result(rc)
        type(c_ptr), intent(inout) :: ck
        rc = c_checkpoint_free(ck)
        if (rc == GANG_OK) ck = c_null_ptr
    end function

    integer(c_int) function gang_trainer_new(g, features, config, tr) result(rc)
        type(c_ptr), intent(in) :: g
        integer, intent(in) :: features
        character(len=*), intent(in) :: config
        type(c_ptr), intent(out) :: tr
        rc = c_trainer_new(g, int(features, c_int64_t), cstr(config), tr)
    end function

    ! One pass over the rows of x(rows, features) (a Fortran array: its columns are the
    ! features) with real targets y(rows); loss receives the gang-wide mean loss.
    integer(c_int) function gang_trainer_step(tr, x, y, loss) result(rc)
        type(c_ptr), intent(in) :: tr
        real(c_float), contiguous, target, intent(in) :: x(:, :), y(:)
        real(c_double), intent(out) :: loss
        rc = c_trainer_step(tr, c_loc(x), size(x, 1, kind=c_int64_t), size(x, 2, kind=c_int64_t), &
            GANG_COLUMN_MAJOR, c_loc(y), c_null_ptr, loss)
    end function

    ! Predictions for the rows of x(rows, features) into out(outputs, rows).
    integer(c_int) function gang_trainer_predict(tr, x, out) result(rc)
        type(c_ptr), intent(in) :: tr
        real(c_float), contiguous, target, intent(in) :: x(:, :)
        real(c_float), contiguous, target, intent(out) :: out(:, :)
        rc = c_trainer_predict(tr, c_loc(x), size(x, 1, kind=c_int64_t), size(x, 2, kind=c_int64_t), &
            GANG_COLUMN_MAJOR, c_loc(out), size(out, kind=c_int64_t))
    end function

    integer(c_int) function gang_trainer_save(tr, path) result(rc)
        type(c_ptr), intent(in) :: tr
        character(len=*), intent(in) :: path
        rc = c_trainer_save(tr, cstr(path))
    end function

    ! The trainer's state into the checkpoints of ck (free ck before the trainer).
    integer(c_int) function gang_trainer_checkpoint(tr, ck) result(rc)
        type(c_ptr), intent(in) :: tr, ck
        rc = c_trainer_checkpoint(tr, ck)
    end function

    integer(c_int) function gang_trainer_free(tr) result(rc)
        type(c_ptr), intent(inout) :: tr
        rc = c_trainer_free(tr)
        if (rc == GANG_OK) tr = c_null_ptr
    end function

    ! Writes this rank's rows of columns(rows, ncols) (real(8), column k named names(k)) as
    ! its part of the Parquet dataset dir, committed exactly once; written is .false. when
    ! dir already held this output.
    integer(c_int) function gang_write_parquet(g, dir, names, columns, written) result(rc)
        type(c_ptr), intent(in) :: g
        character(len=*), intent(in) :: dir
        character(len=*), intent(in) :: names(:)
        real(c_double), contiguous, target, intent(in) :: columns(:, :)
        logical, intent(out) :: written
        character(kind=c_char, len=len(names) + 1), target :: cnames(size(names))
        type(c_ptr) :: name_ptrs(size(names)), col_ptrs(size(names))
        integer(c_int) :: types(size(names)), w
        integer :: k
        if (size(columns, 2) /= size(names)) then
            rc = GANG_ERR_ARGUMENT
            return
        end if
        do k = 1, size(names)
            cnames(k) = trim(names(k)) // c_null_char
            name_ptrs(k) = c_loc(cnames(k))
            col_ptrs(k) = c_loc(columns(1, k))
            types(k) = GANG_F64
        end do
        w = 0
        rc = c_write_parquet(g, cstr(dir), size(columns, 1, kind=c_int64_t), int(size(names), c_int), name_ptrs, &
            types, col_ptrs, w)
        written = w /= 0
    end function
end module gang
