//! WASI's blocking calls bound by the store's deadline: wasmtime-wasi's own
//! implementations, shadowed by ones that give up when the deadline passes
//! or the worker aborts. Without them a guest asleep in `poll`, or blocked on
//! a socket or a FIFO, would outlive `--timeout`.

use wasmtime::component::{Linker, Resource, ResourceTable};

use super::{Sandboxed, host_call};

/// Replaces WASI's blocking waits (`poll`, `pollable.block`: how a guest
/// sleeps or waits for I/O) with ones that honour the store's [`Deadline`](super::Deadline):
/// a guest asleep in the host is as bound by `--timeout` as one computing.
pub(super) fn add_deadline_aware_poll<T: Sandboxed>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};
    use wasmtime_wasi_io::poll::DynPollable;
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.func_wrap(
        "poll",
        |mut store: wasmtime::StoreContextMut<'_, T>, (list,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let deadline = state.deadline().clone();
            let ready = deadline.wait(
                " while waiting in wasi:io/poll",
                state.ctx().table.poll(list),
            )??;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: wasmtime::StoreContextMut<'_, T>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let deadline = state.deadline().clone();
            deadline.wait(
                " while blocked in wasi:io/poll",
                state.ctx().table.block(pollable),
            )??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces WASI's blocking stream calls (a read from a socket that never
/// sends, a write to one that never reads) with ones that honour the store's
/// [`Deadline`], as [`add_deadline_aware_poll`] does for waits: each runs
/// wasmtime-wasi's own implementation, given up when the deadline passes.
pub(super) fn add_deadline_aware_streams<T: Sandboxed>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime_wasi_io::bindings::wasi::io::streams::{
        self as wit, Host as _, HostInputStream, HostOutputStream,
    };
    use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamResult};

    type Store<'a, T> = wasmtime::StoreContextMut<'a, T>;
    /// A stream call's result in its WIT form (a trap stays a trap).
    fn lower<R>(
        table: &mut ResourceTable,
        result: StreamResult<R>,
    ) -> wasmtime::Result<(Result<R, wit::StreamError>,)> {
        Ok((match result {
            Ok(value) => Ok(value),
            Err(e) => Err(table.convert_stream_error(e)?),
        },))
    }

    linker.allow_shadowing(true);
    let mut streams = linker.instance("wasi:io/streams@0.2.12")?;
    const READING: &str = " while blocked reading a wasi:io stream";
    const WRITING: &str = " while blocked writing a wasi:io stream";
    /// Shadows `$name` with `$call` on the store's table, within its deadline.
    macro_rules! within_deadline {
        ($name:literal, $doing:expr, $call:path, $($arg:ident: $ty:ty),*) => {
            streams.func_wrap(
                $name,
                |mut store: Store<'_, T>, ($($arg,)*): ($($ty,)*)| {
                    let _call = host_call(concat!("wasi:io/streams#", $name));
                    let state = store.data_mut();
                    let deadline = state.deadline().clone();
                    let table = state.ctx().table;
                    let result = deadline.wait($doing, $call(&mut *table, $($arg),*))?;
                    lower(table, result)
                },
            )?;
        };
    }
    within_deadline!(
        "[method]input-stream.blocking-read",
        READING,
        HostInputStream::blocking_read,
        stream: Resource<DynInputStream>,
        len: u64
    );
    within_deadline!(
        "[method]input-stream.blocking-skip",
        READING,
        HostInputStream::blocking_skip,
        stream: Resource<DynInputStream>,
        len: u64
    );
    within_deadline!(
        "[method]output-stream.blocking-write-and-flush",
        WRITING,
        HostOutputStream::blocking_write_and_flush,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>
    );
    within_deadline!(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        WRITING,
        HostOutputStream::blocking_write_zeroes_and_flush,
        stream: Resource<DynOutputStream>,
        len: u64
    );
    within_deadline!(
        "[method]output-stream.blocking-flush",
        WRITING,
        HostOutputStream::blocking_flush,
        stream: Resource<DynOutputStream>
    );
    within_deadline!(
        "[method]output-stream.blocking-splice",
        WRITING,
        HostOutputStream::blocking_splice,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64
    );
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces the filesystem calls that can wait without end (opening a FIFO
/// no one writes to, reading from it) with ones that honour the store's
/// [`Deadline`]. Only tasks given a directory (`--allow-dir`) reach them.
pub(super) fn add_deadline_aware_filesystem<T: Sandboxed>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView as _};
    use wasmtime_wasi::p2::FsResult;
    use wasmtime_wasi::p2::bindings::filesystem::types::{
        DescriptorFlags, ErrorCode, Filesize, Host as _, HostDescriptor, OpenFlags, PathFlags,
    };

    type Store<'a, T> = wasmtime::StoreContextMut<'a, T>;
    /// A filesystem call's result in its WIT form (a trap stays a trap).
    fn lower<V: wasmtime_wasi::WasiView, R>(
        state: &mut V,
        result: FsResult<R>,
    ) -> wasmtime::Result<(Result<R, ErrorCode>,)> {
        Ok((match result {
            Ok(value) => Ok(value),
            Err(e) => Err(state.filesystem().convert_error_code(e)?),
        },))
    }

    linker.allow_shadowing(true);
    let mut fs = linker.instance("wasi:filesystem/types@0.2.12")?;
    const DOING: &str = " while blocked in wasi:filesystem";
    fs.func_wrap(
        "[method]descriptor.open-at",
        |mut store: Store<'_, T>,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            let _call = host_call("wasi:filesystem/types#[method]descriptor.open-at");
            let state = store.data_mut();
            let deadline = state.deadline().clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::open_at(
                    &mut state.filesystem(),
                    fd,
                    path_flags,
                    path,
                    oflags,
                    flags,
                ),
            )?;
            lower(state, result)
        },
    )?;
    fs.func_wrap(
        "[method]descriptor.read",
        |mut store: Store<'_, T>, (fd, len, offset): (Resource<Descriptor>, Filesize, Filesize)| {
            let _call = host_call("wasi:filesystem/types#[method]descriptor.read");
            let state = store.data_mut();
            let deadline = state.deadline().clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::read(&mut state.filesystem(), fd, len, offset),
            )?;
            lower(state, result)
        },
    )?;
    fs.func_wrap(
        "[method]descriptor.write",
        |mut store: Store<'_, T>,
         (fd, bytes, offset): (Resource<Descriptor>, Vec<u8>, Filesize)| {
            let _call = host_call("wasi:filesystem/types#[method]descriptor.write");
            let state = store.data_mut();
            let deadline = state.deadline().clone();
            let result = deadline.wait(
                DOING,
                HostDescriptor::write(&mut state.filesystem(), fd, bytes, offset),
            )?;
            lower(state, result)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
