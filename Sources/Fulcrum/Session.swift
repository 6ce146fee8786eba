import EventLoop
import FulcrumCore
import Logging

/// Drives one client from accept to close: picks a backend, retries connect failures on backends not yet
/// tried, and accounts for the connection once the relay ends. Receives only per-connection events.
final class Session: RelayDelegate {
    unowned let worker: Worker
    let pool: PoolRuntime
    private var tried = TriedBackends()
    private var attempts = 0
    private var backend = -1
    private var connected = false
    private var lastError: ConnectError?

    init(worker: Worker, pool: PoolRuntime) {
        self.worker = worker
        self.pool = pool
    }

    /// Connects to the next backend the balancer offers; closes the client when none is left.
    func connectNext(_ relay: Relay) {
        while attempts < pool.maxAttempts, let index = pool.balancer.pick(excluding: tried) {
            attempts += 1
            tried.insert(index)
            backend = index
            guard let error = relay.connect(to: pool.endpoints[index], timeoutMicroseconds: pool.connectTimeoutMicroseconds) else {
                return
            }
            noteFailure(error, backend: index)
        }
        worker.logger.error("no backend available for client, closing it", metadata: [
            "pool": "\(pool.config.name)", "attempts": "\(attempts)",
            "last_error": "\(lastError.map { "\($0)" } ?? "none")",
        ])
        worker.stats.clientsRefused += 1
        relay.close(.noUpstream)
    }

    private func noteFailure(_ error: ConnectError, backend index: Int) {
        lastError = error
        worker.stats.connectFailures += 1
        let more = attempts < pool.maxAttempts
        worker.logger.warning("connect to backend failed\(more ? ", retrying on another backend" : "")", metadata: [
            "pool": "\(pool.config.name)", "backend": "\(pool.config.backends[index].address)",
            "reason": "\(error)", "attempt": "\(attempts)/\(pool.maxAttempts)",
        ])
    }

    func relayConnected(_ relay: Relay) {
        connected = true
        pool.balancer.connectionOpened(backend)
    }

    func relayConnectFailed(_ relay: Relay, error: ConnectError) {
        noteFailure(error, backend: backend)
        connectNext(relay)
    }

    func relayClosed(_ relay: Relay, reason: RelayCloseReason) {
        if connected { pool.balancer.connectionClosed(backend) }
        worker.stats.bytesFromClients &+= relay.bytesFromClient
        worker.stats.bytesToClients &+= relay.bytesToClient
        worker.relayEnded()
    }
}
