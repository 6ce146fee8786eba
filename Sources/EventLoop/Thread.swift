import CLibevent
import Glibc

/// A joinable OS thread, for running one event loop each.
public final class LoopThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    private init(body: @escaping @Sendable () -> Void) {
        self.body = body
    }

    /// Starts `body` on a new thread. The thread starts with `blockedSignals` blocked (it inherits the mask
    /// it is created with, so no signal can reach it before it runs), leaving them to the thread that
    /// watches them.
    public static func spawn(name: String, blockedSignals: [Int32] = [],
                             _ body: @escaping @Sendable () -> Void) -> LoopThread {
        let box = LoopThread(body: body)
        let context = Unmanaged.passRetained(box).toOpaque()
        var blocked = sigset_t()
        var previous = sigset_t()
        sigemptyset(&blocked)
        for signal in blockedSignals { sigaddset(&blocked, signal) }
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        let result = pthread_create(&box.thread, nil, { context in
            let box = Unmanaged<LoopThread>.fromOpaque(context!).takeRetainedValue()
            box.body()
            return nil
        }, context)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        precondition(result == 0, "pthread_create failed: \(errnoText(result))")
        _ = clibevent_set_thread_name(box.thread, String(name.prefix(15)))
        return box
    }

    public func join() {
        pthread_join(thread, nil)
    }
}

/// The number of CPU cores this process may run on.
public func onlineCores() -> Int {
    max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}
