import CLibevent
import Glibc
import Synchronization

// MARK: - Trampolines
//
// Capture-free functions that libevent calls with the relay as an unretained context pointer. Each marks
// the relay as inside a callback so that a close triggered from within defers the final release to here.

@inline(__always)
func withRelay(_ context: UnsafeMutableRawPointer?, _ body: (Relay) -> Void) {
    let unmanaged = Unmanaged<Relay>.fromOpaque(context!)
    let release = unmanaged._withUnsafeGuaranteedRef { relay -> Bool in
        let outer = relay.inCallback
        relay.inCallback = true
        body(relay)
        relay.inCallback = outer
        guard !outer && relay.releasePending else { return false }
        relay.releasePending = false
        return true
    }
    if release { unmanaged.release() }
}

let relayClientCallback: event_callback_fn = { _, what, context in
    withRelay(context) { $0.ready(Relay.client, Int32(what)) }
}

let relayUpstreamCallback: event_callback_fn = { _, what, context in
    withRelay(context) { $0.ready(Relay.upstream, Int32(what)) }
}

let relayIdleCallback: event_callback_fn = { _, _, context in
    withRelay(context) { $0.idleCheck() }
}

let relayFirstByteCallback: event_callback_fn = { _, _, context in
    withRelay(context) { $0.upstreamFailed(.firstByteTimeout) }
}

// MARK: - Forwarding

extension Relay {
    /// What a socket's event reported: `what` is libevent's EV_READ, EV_WRITE and EV_CLOSED bits.
    @inline(__always)
    func ready(_ side: Int, _ what: Int32) {
        let source = sides + side
        if what & EV_CLOSED != 0 { source.pointee.finReceived = true }
        guard state == .relaying else {
            if what & (EV_READ | EV_CLOSED) != 0 { source.pointee.readReady = true }
            return
        }
        if what & (EV_READ | EV_CLOSED) != 0 && !source.pointee.paused && !source.pointee.eof { readable(side) }
        if what & EV_WRITE != 0 && source.pointee.writeArmed && state == .relaying { writable(side) }
    }

    /// Data is ready on `side`: read it and write it straight to the other side, queueing only what that
    /// side cannot take now. Reads until one comes back short (the socket is empty: its next bytes are a
    /// new edge), at most `readsPerWakeup` times; a side that still has more continues on the loop's next
    /// pass.
    @inline(__always)
    func readable(_ side: Int) {
        let source = sides + side
        let peer = 1 - side
        let destination = sides + peer
        let scratch = eventBase.scratch
        let size = eventBase.scratchSize
        lastActivity = eventBase.coarseMicroseconds
        if options.measureLatency { turn(side, now: eventBase.monotonicMicroseconds) }
        if source.pointee.splicing { return spliceReadable(side) }
        for _ in 0..<Self.readsPerWakeup {
            let filled: Bool
            if destination.pointee.queue != nil && destination.pointee.queued > 0 {
                switch readIntoQueue(side) {
                case .filled: filled = true
                case .drained: filled = false
                case .stopped: return
                }
            } else {
                let n = clibevent_read(source.pointee.fd, scratch, size)
                if n > 0 {
                    source.pointee.bytesRead &+= n
                    if let counters = byteCounters { count(n, counters + side) }
                    if !firstByteSeen {
                        beforeFirstByte(side, scratch, n)
                        guard state == .relaying else { return }
                    }
                    var written = clibevent_send(destination.pointee.fd, scratch, n, Int32(MSG_NOSIGNAL))
                    if written < 0 {
                        let code = currentErrno
                        guard code == EAGAIN || code == EINTR else { return failed(peer, code) }
                        // EAGAIN leaves the socket waiting for room, which brings its writable edge; an
                        // interrupted send does not, so ask for the flush directly.
                        if code == EINTR { event_active(ioEvent(peer), EV_WRITE, 0) }
                        written = 0
                    }
                    if written < n {
                        enqueue(peer, scratch + written, n - written)
                    } else if n == size && maySplice(side) {
                        // A full scratch buffer: bulk. The next reads go through a pipe.
                        source.pointee.splicing = true
                        return spliceReadable(side)
                    }
                    filled = n == size
                } else if n == 0 {
                    if side == Relay.upstream && !firstByteSeen && upstreamFailed(.closed) { return }
                    return endOfFile(side)
                } else {
                    let code = currentErrno
                    if code == EAGAIN { return }
                    if code == EINTR { continue }
                    return failed(side, code)
                }
            }
            guard state == .relaying && !source.pointee.paused else { return }
            // Short: the socket is empty for now, unless its end-of-file has arrived, which one more read sees.
            if !filled && !source.pointee.finReceived { return }
        }
        event_active(ioEvent(side), EV_READ, 0)
    }

    /// Adds a chunk to a metric counter only this thread writes: a relaxed load and store, no locked
    /// instruction.
    @inline(__always)
    func count(_ n: Int, _ cell: UnsafeMutablePointer<Atomic<Int>>) {
        cell.pointee.store(cell.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    /// Until the backend's first byte: keep the client's bytes for replay and watch for the first byte.
    private func beforeFirstByte(_ side: Int, _ bytes: UnsafeRawPointer, _ count: Int) {
        if side == Relay.upstream {
            firstByteSeen = true
            if let replay { evbuffer_free(replay) }
            replay = nil
            disarmFirstByteTimer()
            delegate?.relayFirstByte(self)
            return
        }
        if let replay {
            // Past the limit the connection can no longer be replayed: stop keeping its bytes.
            if evbuffer_get_length(replay) + count > options.replayLimit {
                evbuffer_free(replay)
                self.replay = nil
            } else {
                evbuffer_add(replay, bytes, count)
            }
        }
        armFirstByteTimer()
    }

    func disarmFirstByteTimer() {
        guard firstByteTimerArmed else { return }
        event_del(event(.firstByte))
        firstByteTimerArmed = false
    }

    /// Starts the first-byte timeout, if configured and not already running.
    func armFirstByteTimer() {
        guard options.firstByteTimeoutMicroseconds > 0 && !firstByteTimerArmed else { return }
        firstByteTimerArmed = true
        if !firstByteTimerAssigned {
            firstByteTimerAssigned = true
            event_assign(event(.firstByte), eventBase.base, -1, 0, relayFirstByteCallback,
                         Unmanaged.passUnretained(self).toOpaque())
        }
        var tv = timevalFrom(microseconds: options.firstByteTimeoutMicroseconds)
        event_add(event(.firstByte), &tv)
    }

    /// The backend failed before its first byte: the delegate may replay on another backend (true), or
    /// the failure takes its course (false).
    @discardableResult
    func upstreamFailed(_ failure: UpstreamFailure) -> Bool {
        guard state == .relaying else { return false }
        disarmFirstByteTimer()
        let replayable = canReplay
        let response = delegate?.relayUpstreamFailed(self, failure) ?? .proceed
        if replayable && response == .replay && state == .relaying {
            detachUpstream()
            delegate?.relayDetached(self)
            return true
        }
        if failure == .firstByteTimeout && state == .relaying { close(.upstreamError(ETIMEDOUT)) }
        return state != .relaying
    }

    /// Turn-taking without parsing: client bytes start a wait, the first backend bytes after them end it.
    private func turn(_ side: Int, now: Int64) {
        if side == Relay.client {
            if awaitingSince == 0 { awaitingSince = now }
        } else if awaitingSince != 0 {
            let latency = now - awaitingSince
            awaitingSince = 0
            delegate?.relayMeasured(self, latency: latency)
        }
    }

    enum QueuedRead { case filled, drained, stopped }

    /// While the other side has a queue, read into its tail directly so bytes stay in order. `.filled`:
    /// the read took all it asked for (the socket may hold more); `.drained`: it came back short;
    /// `.stopped`: the relay reached the end-of-file, failed, or closed.
    private func readIntoQueue(_ side: Int) -> QueuedRead {
        let source = sides + side
        let peer = 1 - side
        let queue = sides[peer].queue!
        var vector = iovec()
        let want = min(eventBase.scratchSize, max(4096, options.highWatermark - evbuffer_get_length(queue)))
        guard evbuffer_reserve_space(queue, want, &vector, 1) >= 1 else {
            failed(side, ENOMEM)
            return .stopped
        }
        let limit = min(vector.iov_len, want)
        let n = clibevent_read(source.pointee.fd, vector.iov_base, limit)
        if n > 0 {
            vector.iov_len = n
            evbuffer_commit_space(queue, &vector, 1)
            source.pointee.bytesRead &+= n
            if let counters = byteCounters { count(n, counters + side) }
            if !firstByteSeen {
                beforeFirstByte(side, vector.iov_base, n)
                guard state == .relaying else { return .stopped }
            }
            pauseIfFull(peer)
            return n == limit ? .filled : .drained
        }
        evbuffer_commit_space(queue, nil, 0)
        if n == 0 {
            if side == Relay.upstream && !firstByteSeen && upstreamFailed(.closed) { return .stopped }
            endOfFile(side)
            return .stopped
        }
        let code = currentErrno
        if code == EAGAIN { return .stopped }
        if code == EINTR { return .filled }
        failed(side, code)
        return .stopped
    }

    /// Queues bytes for `side` that its socket did not take; its writable edge (the kernel reports one
    /// once room frees up after a short send) flushes them.
    private func enqueue(_ side: Int, _ bytes: UnsafeMutableRawPointer, _ count: Int) {
        if sides[side].queue == nil { sides[side].queue = evbuffer_new() }
        evbuffer_add(sides[side].queue, bytes, count)
        sides[side].writeArmed = true
        pauseIfFull(side)
    }

    /// Stops reading from the peer of `side` while `side`'s queue is at the high watermark.
    private func pauseIfFull(_ side: Int) {
        let peer = 1 - side
        if sides[side].queued >= options.highWatermark { sides[peer].paused = true }
    }

    /// `side` can take more bytes: flush its queue, resume its paused peer, finish a pending half-close.
    func writable(_ side: Int) {
        lastActivity = eventBase.coarseMicroseconds
        let target = sides + side
        if target.pointee.piped > 0 {
            if !flushPipe(side) { return }
            // The rest waits for the next writable edge; the peer reads again only once the pipe is empty
            // (see `spliceReadable`).
            if target.pointee.piped > 0 { return }
            releasePipe(side)
        }
        if let queue = target.pointee.queue, evbuffer_get_length(queue) > 0 {
            if !flush(side, queue) { return }
        }
        let remaining = target.pointee.pending
        let peer = 1 - side
        if remaining == 0 { target.pointee.writeArmed = false }
        if sides[peer].paused && remaining <= options.highWatermark / 2 {
            sides[peer].paused = false
            // Its bytes waited in the socket; their edge is gone.
            if !sides[peer].eof { event_active(ioEvent(peer), EV_READ, 0) }
        }
        if remaining == 0 && sides[peer].eof { shutdownWrite(side) }
    }

    /// Writes `side`'s queue until it is empty or the socket is full (a short write: the socket then
    /// reports a writable edge once it has room). False if the relay failed.
    private func flush(_ side: Int, _ queue: OpaquePointer) -> Bool {
        let vectors = eventBase.vectors
        for _ in 0..<Self.readsPerWakeup {
            let found = Int(evbuffer_peek(queue, -1, nil, vectors, Int32(EventBase.vectorCount)))
            let count = min(found, EventBase.vectorCount)
            var offered = 0
            for i in 0..<count { offered += vectors[i].iov_len }
            let n = writev(sides[side].fd, vectors, Int32(count))
            if n < 0 {
                let code = currentErrno
                if code == EAGAIN { return true }
                if code == EINTR { continue }
                failed(side, code)
                return false
            }
            evbuffer_drain(queue, n)
            if n < offered || evbuffer_get_length(queue) == 0 { return true }
        }
        // Still room after several writes: continue on the loop's next pass.
        event_active(ioEvent(side), EV_WRITE, 0)
        return true
    }

    /// `side` finished sending: shut the other side's write half once its queue is flushed.
    func endOfFile(_ side: Int) {
        if side == Relay.upstream && !sides[Relay.client].eof { upstreamEndedFirst = true }
        sides[side].eof = true
        let peer = 1 - side
        if sides[peer].pending == 0 { shutdownWrite(peer) }
    }

    /// Forwards an end-of-file to `side`. When the other direction has already finished too, closing the
    /// relay sends the same FIN (each socket's own end-of-file has been read, so nothing unread turns the
    /// close into a reset), and the `shutdown` call is left out.
    private func shutdownWrite(_ side: Int) {
        guard !sides[side].writeShut else { return }
        sides[side].writeShut = true
        if sides[1 - side].writeShut {
            close(.completed)
            return
        }
        shutdown(sides[side].fd, Int32(SHUT_WR))
    }

    func failed(_ side: Int, _ code: Int32) {
        if side == Relay.upstream && !firstByteSeen && upstreamFailed(.reset(code)) { return }
        close(side == Relay.client ? .clientError(code) : .upstreamError(code))
    }

    func established() {
        state = .relaying
        if let replay, evbuffer_get_length(replay) > 0 {
            // A replay: a copy of the kept bytes goes first; the originals stay kept should this backend fail too.
            let queue = evbuffer_new()!
            sides[1].queue = queue
            var extents = [iovec](repeating: iovec(), count: 16)
            let found = Int(evbuffer_peek(replay, -1, nil, &extents, 16))
            if found > extents.count {
                extents = [iovec](repeating: iovec(), count: found)
                _ = evbuffer_peek(replay, -1, nil, &extents, Int32(found))
            }
            for extent in extents.prefix(found) { evbuffer_add(queue, extent.iov_base, extent.iov_len) }
            sides[1].writeArmed = true
            // The new socket's writable edge was the connect's: flush on the loop's next pass.
            event_active(upstreamEvent!, EV_WRITE, 0)
            armFirstByteTimer()
        } else if sides[0].eof {
            shutdownWrite(Relay.upstream)
            guard state == .relaying else { return }
        }
        // What either socket reported before relaying started is read now (its edge will not come again).
        for side in 0..<2 where sides[side].readReady {
            sides[side].readReady = false
            if !sides[side].eof { event_active(ioEvent(side), EV_READ, 0) }
        }
        lastActivity = eventBase.coarseMicroseconds
        if options.idleTimeoutMicroseconds > 0 {
            var tv = timevalFrom(microseconds: options.idleTimeoutMicroseconds)
            event_add(event(.idle), &tv)
        }
    }

    func idleCheck() {
        guard state == .relaying else { return }
        let idleFor = eventBase.coarseMicroseconds - lastActivity
        let remaining = options.idleTimeoutMicroseconds - idleFor
        if remaining <= 0 {
            close(.idleTimeout)
        } else {
            var tv = timevalFrom(microseconds: remaining)
            event_add(event(.idle), &tv)
        }
    }
}
