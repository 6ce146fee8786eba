import CLibevent
import Glibc

/// A pipe that bytes pass through on their way from one socket to another with `splice`: the kernel
/// moves references to the socket's pages into the pipe and from the pipe to the other socket, so the
/// bytes are never copied into (or out of) user space.
struct SplicePipe {
    let read: Int32
    let write: Int32
}

/// The pipes of one loop, reused: a relay takes one while bytes of a spliced direction are on their way
/// and gives it back once it is empty again, so a pipe costs its two descriptors and a `pipe2` only
/// while many connections are spliced at once. Confined to its loop's thread.
final class PipePool {
    /// Each pipe is resized to this (the kernel's default is 64 KiB); more bytes per `splice` pair means
    /// fewer calls per gigabyte.
    static let pipeSize: Int32 = 256 << 10
    /// Spare pipes kept at most; more are closed when given back.
    static let spareLimit = 32

    private var spare: [SplicePipe] = []
    /// What one pipe holds, as the kernel set it (the default when resizing failed).
    private(set) var capacity = 64 << 10
    /// Pipes made so far.
    private(set) var created = 0

    init() {
        spare.reserveCapacity(Self.spareLimit)
    }

    deinit {
        for pipe in spare { close(pipe) }
    }

    /// An empty pipe, or nil when none can be made (out of descriptors): the caller copies instead.
    func take() -> SplicePipe? {
        if let pipe = spare.popLast() { return pipe }
        var fds: (Int32, Int32) = (-1, -1)
        let made = withUnsafeMutableBytes(of: &fds) { raw in
            clibevent_pipe2(raw.baseAddress!.assumingMemoryBound(to: Int32.self), O_NONBLOCK | O_CLOEXEC)
        }
        guard made == 0 else { return nil }
        created += 1
        let size = clibevent_set_pipe_size(fds.1, Self.pipeSize)
        if size > 0 { capacity = Int(size) }
        return SplicePipe(read: fds.0, write: fds.1)
    }

    /// Takes back a pipe that is empty; one that still holds bytes (its connection ended) is closed.
    func give(_ pipe: SplicePipe, empty: Bool) {
        if empty && spare.count < Self.spareLimit {
            spare.append(pipe)
        } else {
            close(pipe)
        }
    }

    private func close(_ pipe: SplicePipe) {
        Glibc.close(pipe.read)
        Glibc.close(pipe.write)
    }
}
