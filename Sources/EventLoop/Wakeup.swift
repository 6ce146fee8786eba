import CLibevent
import Glibc

/// Sends one-byte commands to an event loop from any thread, through a non-blocking pipe.
public struct WakeupSender: Sendable {
    let fd: Int32

    /// Queues `command`; safe from any thread, never blocks. A command that finds the pipe full is dropped:
    /// the answer is then false, for callers that must know.
    @discardableResult
    public func send(_ command: UInt8) -> Bool {
        var byte = command
        while true {
            if write(fd, &byte, 1) == 1 { return true }
            if currentErrno != EINTR { return false }
        }
    }
}

/// A non-blocking pipe that carries commands to one loop. Any thread may hold its sender, so only its
/// owner closes it, once no thread that could still write to it is running: a descriptor closed early
/// could be reused by a socket that a late command would then be written into.
public final class WakeupPipe: @unchecked Sendable {
    public let sender: WakeupSender
    let receiveFD: Int32
    private var closed = false

    public init() throws(SystemError) {
        var fds: (Int32, Int32) = (0, 0)
        _ = try withUnsafeMutableBytes(of: &fds) { raw throws(SystemError) in
            try syscall("pipe") { pipe(raw.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        }
        for fd in [fds.0, fds.1] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        receiveFD = fds.0
        sender = WakeupSender(fd: fds.1)
    }

    /// Closes both ends. Call it from the owner's thread once every thread holding the sender has ended.
    public func close() {
        guard !closed else { return }
        closed = true
        Socket.close(receiveFD)
        Socket.close(sender.fd)
    }

    deinit { close() }
}

/// The loop side of a wakeup pipe: runs its handler on the loop thread for every command byte received.
public final class WakeupReceiver {
    private var event: OpaquePointer?
    private let pipe: WakeupPipe
    private let handler: (UInt8) -> Void

    /// Attaches the read end of `pipe` to `base`. Freeing the receiver detaches it; the pipe stays open
    /// until its owner closes it.
    public init(base: EventBase, pipe: WakeupPipe, handler: @escaping (UInt8) -> Void) {
        self.pipe = pipe
        self.handler = handler
        event = event_new(base.base, pipe.receiveFD, Int16(EV_READ | EV_PERSIST), { fd, _, context in
            let receiver = Unmanaged<WakeupReceiver>.fromOpaque(context!).takeUnretainedValue()
            var buffer = (UInt64(0), UInt64(0))
            let n = withUnsafeMutableBytes(of: &buffer) { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            withUnsafeBytes(of: buffer) { raw in
                for i in 0..<n { receiver.handler(raw[i]) }
            }
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit { freeEvent(event) }
}
