import FerryJobs
import Foundation
import PostgresNIO
import Synchronization

/// One `claim(worker:limit:lease:)` call.
struct ClaimRequest: Sendable {
    let worker: String
    let limit: Int
    let lease: Duration
}

/// Lets the claims that one store's callers make at the same moment share a statement, the way
/// a database shares one log flush among the transactions that commit together. A claim runs at
/// once while fewer than `statements` claim statements are in flight; otherwise it waits for the
/// statement in flight to end and is then taken, with every other claim waiting by then, into
/// the next one. Every request keeps its own worker, limit and lease, and gets the answer it
/// would have got alone (the oldest claimable tasks, each leased to it, each attempt counted and
/// recorded); a statement that fails fails each of its requests. Nothing waits for company: a
/// lone claim is one statement, as before.
///
/// One statement in flight is the default, measured with 8 workers claiming one task at a time
/// through one store (ferry-claim-bench, 20,000 tasks): with commits of 0.1 ms it claimed 6,800
/// tasks/s against 3,300 for a statement per claim (each claim's statement, commit and round trip
/// cost more CPU than the claim itself); with commits slowed to 3 ms it claimed 1,750/s against
/// 1,840/s, as each statement then carries all eight claims in one commit.
final class ClaimCombiner: Sendable {
    private enum Turn: Sendable {
        case lead
        case done(Result<[TaskRecord], any Error>)
    }

    private struct Waiter: Sendable {
        let request: ClaimRequest
        let continuation: CheckedContinuation<Turn, Never>
    }

    private struct State {
        var inFlight = 0
        var waiting: [Waiter] = []
        /// Requests the last statement carried. While that is one, claims are coming one at a
        /// time (one worker per store, as with a worker process per node), and a leader neither
        /// yields for company nor runs its statement in a task of its own: each of those hops to
        /// another thread cost more CPU than the rest of the client's work for a claim.
        var lastBatch = 1
    }

    private let state = Mutex(State())
    /// Claim statements one store runs at once.
    let statements: Int
    /// Tasks one statement claims at most, unless a single request asks for more.
    let slots: Int

    init(statements: Int = 1, slots: Int = 256) {
        self.statements = max(statements, 1)
        self.slots = max(slots, 1)
    }

    /// `run` claims for a batch of requests, answering each in order.
    func claim(_ request: ClaimRequest,
               run: @escaping @Sendable ([ClaimRequest]) async throws -> [[TaskRecord]]) async throws -> [TaskRecord] {
        let turn = await withCheckedContinuation { (continuation: CheckedContinuation<Turn, Never>) in
            let leads = state.withLock { state -> Bool in
                if state.inFlight < statements {
                    state.inFlight += 1
                    return true
                }
                state.waiting.append(Waiter(request: request, continuation: continuation))
                return false
            }
            if leads { continuation.resume(returning: .lead) }
        }
        if case .done(let result) = turn { return try result.get() }

        // This request leads a statement: it takes along the requests waiting now, in order. When
        // claims have been coming together, it first lets the tasks that are ready to run go
        // ahead, so that the callers the previous statement has just answered, if they claim
        // again at once, join this statement rather than form the next one: one yield, never a
        // wait.
        if state.withLock({ $0.lastBatch > 1 || !$0.waiting.isEmpty }) { await Task.yield() }
        let company = state.withLock { state -> [Waiter] in
            var total = request.limit
            var taken = 0
            for waiter in state.waiting {
                guard total + waiter.request.limit <= slots else { break }
                total += waiter.request.limit
                taken += 1
            }
            let company = Array(state.waiting.prefix(taken))
            state.waiting.removeFirst(taken)
            state.lastBatch = 1 + taken
            return company
        }
        // With company, in a task of its own, so that cancelling the leader's caller cannot fail
        // the others'.
        let requests = [request] + company.map(\.request)
        let outcome: Result<[[TaskRecord]], any Error>
        do {
            let answers = company.isEmpty ? try await run(requests) : try await Task { try await run(requests) }.value
            outcome = .success(answers)
        } catch {
            outcome = .failure(error)
        }
        for (index, waiter) in company.enumerated() {
            waiter.continuation.resume(returning: .done(outcome.map { $0[index + 1] }))
        }
        // Hand the statement over to the first claim still waiting, if any.
        let next = state.withLock { state -> Waiter? in
            guard !state.waiting.isEmpty else {
                state.inFlight -= 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.continuation.resume(returning: .lead)
        return try outcome.map { $0[0] }.get()
    }
}

/// The claim statement. `$1` names a worker and `$2` a lease length (seconds) for each slot; the
/// claimable tasks, oldest first, fill the slots in order, each leased to its slot's worker, its
/// attempt counted and recorded in its history. Free tasks come from the queue (`task_queue`,
/// see the schema), tasks whose lease expired from the index of leases, bounded by the server's
/// time as an InitPlan parameter: an index condition, not a filter run over every live lease.
/// Both lock with SKIP LOCKED, so a claim never waits for another.
///
/// The statement is prepared once per connection and runs a generic plan: planning it each time
/// cost about as much as running it. The planner only chooses the generic plan when it knows the
/// LIMIT, so that is written into the text, one statement per size; a claim for fewer slots than
/// its statement's size locks a few more rows than it leases, for the length of its transaction.
///
/// A statement of one slot (a worker claiming alone, as each of several worker processes does)
/// has no slots to number: `$1` is then the worker and `$2` the lease, and the plan has neither
/// the arrays' unnesting nor the numbering window. The server alone (8 pgbench clients, 40,000
/// queued tasks, four runs each, interleaved) claimed 4,140–4,770 tasks/s with it against
/// 2,860–4,450 with the slotted statement; 8 workers with a store each (ferry-claim-bench
/// --separate-stores, ten runs each, interleaved) 1,740–3,470 (median 2,920) against
/// 2,030–3,210 (median 2,760), faster in eight runs of ten, their own CPU being the rest.
enum ClaimSQL {
    static let sizes = [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256]
    static let prepared: [Int: String] = Dictionary(uniqueKeysWithValues: sizes.map { ($0, text(limit: $0)) })

    static func text(limit: Int) -> String {
        guard limit > 1 else { return single }
        return """
        \(candidates(limit: limit)),
        s AS MATERIALIZED (
            SELECT s.worker, s.lease, s.slot FROM unnest($1::text[], $2::float8[]) WITH ORDINALITY AS s(worker, lease, slot)),
        c AS MATERIALIZED (
            SELECT id, previous, row_number() OVER (ORDER BY created_at, id) AS slot
            FROM (SELECT * FROM free UNION ALL SELECT * FROM expired) both_kinds
            ORDER BY created_at, id LIMIT \(limit)),
        u AS (
            UPDATE tasks t SET lease_owner = s.worker, lease_expires_at = n.now + s.lease,
              attempts = t.attempts + \(counted("nullif(c.previous, s.worker)")),
              waiting_for = \(keptWait("nullif(c.previous, s.worker)")), updated_at = n.now
            FROM c JOIN s ON s.slot = c.slot, n WHERE t.id = c.id AND \(stillClaimable)
            RETURNING t.*, c.slot, nullif(c.previous, s.worker) AS previous),
        \(recorded(ordered: " ORDER BY u.slot"))
        SELECT \(PostgresSchema.columns("u")), u.slot, u.previous FROM u ORDER BY u.slot
        """
    }

    /// One slot: the oldest claimable task, leased to `$1` for `$2` seconds, as slot 1.
    static let single = oneSlot(owner: nil)

    /// `single` for the tasks of one owner (`$3`), for a worker without root's rights: written out
    /// each time, not prepared, and never combined with other claims, as such workers are few.
    static let owned = oneSlot(owner: "$3")

    private static func oneSlot(owner: String?) -> String {
        """
        \(candidates(limit: 1, owner: owner)),
        c AS MATERIALIZED (
            SELECT * FROM free UNION ALL SELECT * FROM expired
            ORDER BY created_at, id LIMIT 1),
        u AS (
            UPDATE tasks t SET lease_owner = $1, lease_expires_at = n.now + $2,
              attempts = t.attempts + \(counted("nullif(c.previous, $1)")),
              waiting_for = \(keptWait("nullif(c.previous, $1)")), updated_at = n.now
            FROM c, n WHERE t.id = c.id\(owner.map { " AND t.owner = \($0)" } ?? "") AND \(stillClaimable)
            RETURNING t.*, nullif(c.previous, $1) AS previous),
        \(recorded())
        SELECT \(PostgresSchema.columns("u")), 1::bigint AS slot, u.previous FROM u
        """
    }

    /// A free task (`previous` null) is checked on its own row too, not taken on the queue's word
    /// alone: a queue row left stale (triggers off for a data-only restore, a replica role) must
    /// not hand out a task another worker holds, or one that ended. Checked in the update, on the
    /// few rows taken, not in the scan, whose plan it would change.
    static let stillClaimable = "(c.previous IS NOT NULL OR (t.lease_owner IS NULL AND t.status IN ('pending','validating','locked','copying','verifying','committing')))"

    /// Queue rows whose task is not claimable: a stale row the check above turns away would stay
    /// the oldest, to be taken and turned away by every claim after, while the tasks behind it
    /// waited for good. Removed by `sweepStaleQueueRows` after a claim that came back short, not
    /// in the claim statement: there, on every claim, it cost a tenth or more of the claim rate
    /// (8 workers sharing a store: 3,700–5,000 claims/s against 4,600–5,400 without it).
    static let staleQueueRows = """
        DELETE FROM task_queue q USING tasks t
        WHERE q.task_id = t.id AND NOT (t.lease_owner IS NULL AND t.status IN ('pending','validating','locked','copying','verifying','committing'))
        """

    /// The server's time (`n`) — and the claim durable when it returns, whatever the site's
    /// `synchronous_commit` (a takeover undone by a crash would let another worker take the task
    /// over again while this one runs it), as the store's transactions are — and up to `limit` free (`free`) and expired (`expired`) tasks,
    /// locked, each with the worker whose lease it was (`previous`, null for a free one). The
    /// rows are locked FOR NO KEY UPDATE, as the claim's update locks them: a FOR UPDATE lock
    /// would conflict with the KEY SHARE lock that inserting an event (its foreign key) takes,
    /// and the claim would skip a task someone was only writing history for.
    private static func candidates(limit: Int, owner: String? = nil) -> String {
        let freeOwned = owner.map { " AND t.owner = \($0)" } ?? ""
        let expiredOwned = owner.map { " AND tasks.owner = \($0)" } ?? ""
        return """
        WITH n AS MATERIALIZED (SELECT \(PostgresSchema.clock) AS now, set_config('synchronous_commit', 'on', true) AS durable),
        free AS MATERIALIZED (
            SELECT t.id, t.created_at, NULL::text AS previous FROM task_queue q JOIN tasks t ON t.id = q.task_id
            WHERE (q.not_before IS NULL OR q.not_before <= (SELECT now FROM n))\(freeOwned)
            ORDER BY q.created_at, q.task_id
            LIMIT \(limit)
            FOR NO KEY UPDATE OF q, t SKIP LOCKED),
        expired AS MATERIALIZED (
            SELECT tasks.id, tasks.created_at, tasks.lease_owner AS previous FROM tasks
            WHERE tasks.lease_owner IS NOT NULL AND tasks.lease_expires_at < (SELECT now FROM n)
              AND tasks.status IN ('pending','validating','locked','copying','verifying','committing')
              AND (tasks.not_before IS NULL OR tasks.not_before <= (SELECT now FROM n))\(expiredOwned)
            ORDER BY tasks.lease_expires_at
            LIMIT \(limit)
            FOR NO KEY UPDATE OF tasks SKIP LOCKED)
        """
    }

    /// Whether the claim is a look: the task waits for another's locks (`TaskStore.wait`), was
    /// handed back, and is not taken over (`previous`, the worker whose lease the claim takes
    /// over, is null). A look counts no attempt, has no history entry and keeps the wait; any
    /// other claim ends it.
    static func look(_ previous: String) -> String {
        "(t.waiting_for IS NOT NULL AND \(previous) IS NULL AND t.status IN ('validating','committing'))"
    }

    /// What a claim adds to the task's attempts: 0 for a look, else 1.
    static func counted(_ previous: String) -> String { "CASE WHEN \(look(previous)) THEN 0 ELSE 1 END" }

    /// The task's `waiting_for` after the claim: kept by a look, else none.
    static func keptWait(_ previous: String) -> String { "CASE WHEN \(look(previous)) THEN t.waiting_for END" }

    /// Each claimed task's history entry, in slot order when there are slots: the words of
    /// `TaskEvent.claimed(by:attempt:takenOverFrom:)`. A look (its `waiting_for` kept) has none.
    private static func recorded(ordered order: String = "") -> String {
        """
        e AS (
            INSERT INTO task_events (task_id, at, status, message)
            SELECT u.id, u.updated_at, u.status,
                   'claimed by ' || u.lease_owner || ' (attempt ' || u.attempts || ')' || coalesce(' after the lease of ' || u.previous || ' expired', '')
            FROM u WHERE u.waiting_for IS NULL\(order))
        """
    }
}

/// A claim statement's size, as a type: a prepared statement's name and text are static.
protocol ClaimSize: Sendable { static var limit: Int { get } }
enum ClaimSize2: ClaimSize { static var limit: Int { 2 } }
enum ClaimSize3: ClaimSize { static var limit: Int { 3 } }
enum ClaimSize4: ClaimSize { static var limit: Int { 4 } }
enum ClaimSize5: ClaimSize { static var limit: Int { 5 } }
enum ClaimSize6: ClaimSize { static var limit: Int { 6 } }
enum ClaimSize7: ClaimSize { static var limit: Int { 7 } }
enum ClaimSize8: ClaimSize { static var limit: Int { 8 } }
enum ClaimSize16: ClaimSize { static var limit: Int { 16 } }
enum ClaimSize32: ClaimSize { static var limit: Int { 32 } }
enum ClaimSize64: ClaimSize { static var limit: Int { 64 } }
enum ClaimSize128: ClaimSize { static var limit: Int { 128 } }
enum ClaimSize256: ClaimSize { static var limit: Int { 256 } }

/// The one-slot claim statement (`ClaimSQL.single`).
struct SingleClaimStatement: PostgresPreparedStatement {
    typealias Row = PostgresRow
    static let name = "ferry_claim_single"
    static let sql = ClaimSQL.single
    static let bindingDataTypes: [PostgresDataType] = [.text, .float8]

    let worker: String
    let lease: Double

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(worker)
        bindings.append(lease)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}

struct ClaimStatement<Size: ClaimSize>: PostgresPreparedStatement {
    typealias Row = PostgresRow
    static var name: String { "ferry_claim_\(Size.limit)" }
    static var sql: String { ClaimSQL.prepared[Size.limit] ?? ClaimSQL.text(limit: Size.limit) }
    static var bindingDataTypes: [PostgresDataType] { [.textArray, .float8Array] }

    let workers: [String]
    let leases: [Double]

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings()
        bindings.append(workers)
        bindings.append(leases)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}

extension PostgresTaskStore {
    /// Claims of one owner's tasks (`ClaimSQL.owned`), a task per statement.
    public func claim(worker: String, limit: Int, lease: Duration, ownedBy owner: String) async throws -> [TaskRecord] {
        var claimed: [TaskRecord] = []
        while claimed.count < limit {
            var bindings = PostgresBindings()
            bindings.append(worker)
            bindings.append(lease.seconds)
            bindings.append(owner)
            let found: PostgresRow?
            do {
                found = try await rows(PostgresQuery(unsafeSQL: ClaimSQL.owned, binds: bindings)).first
            } catch {
                // The tasks taken already are leased to this worker: they are answered, not lost
                // to their lease's expiry.
                if claimed.isEmpty { throw error }
                break
            }
            guard let row = found else {
                sweepStaleQueueRows(atMostEvery: .seconds(30))
                break
            }
            tookFromQueue(1)
            var record = try PostgresSchema.record(row)
            record.takenOverFrom = try row.makeRandomAccess()["previous"].decode(String?.self)
            claimed.append(record)
        }
        return claimed
    }

    /// Runs the claim statement for these slots (one worker and lease each) and returns its rows.
    func claimRows(workers: [String], leases: [Double]) async throws -> [PostgresRow] {
        let slots = workers.count
        switch ClaimSQL.sizes.first(where: { $0 >= slots }) {
        case 1: return try await execute(SingleClaimStatement(worker: workers[0], lease: leases[0]))
        case 2: return try await execute(ClaimStatement<ClaimSize2>(workers: workers, leases: leases))
        case 3: return try await execute(ClaimStatement<ClaimSize3>(workers: workers, leases: leases))
        case 4: return try await execute(ClaimStatement<ClaimSize4>(workers: workers, leases: leases))
        case 5: return try await execute(ClaimStatement<ClaimSize5>(workers: workers, leases: leases))
        case 6: return try await execute(ClaimStatement<ClaimSize6>(workers: workers, leases: leases))
        case 7: return try await execute(ClaimStatement<ClaimSize7>(workers: workers, leases: leases))
        case 8: return try await execute(ClaimStatement<ClaimSize8>(workers: workers, leases: leases))
        case 16: return try await execute(ClaimStatement<ClaimSize16>(workers: workers, leases: leases))
        case 32: return try await execute(ClaimStatement<ClaimSize32>(workers: workers, leases: leases))
        case 64: return try await execute(ClaimStatement<ClaimSize64>(workers: workers, leases: leases))
        case 128: return try await execute(ClaimStatement<ClaimSize128>(workers: workers, leases: leases))
        case 256: return try await execute(ClaimStatement<ClaimSize256>(workers: workers, leases: leases))
        default:  // more than any prepared size: planned for this one call
            var bindings = PostgresBindings()
            bindings.append(workers)
            bindings.append(leases)
            return try await rows(PostgresQuery(unsafeSQL: ClaimSQL.text(limit: slots), binds: bindings))
        }
    }

    /// Runs a prepared statement on a pooled connection (its own transaction), again if the server
    /// undid it for a conflict (`isConflict`); server errors become `.database`.
    func execute<Statement: PostgresPreparedStatement>(_ statement: Statement) async throws -> [PostgresRow]
        where Statement.Row == PostgresRow {
        try await Self.retryingConflicts {
            do {
                var rows: [PostgresRow] = []
                for try await row in try await client.execute(statement, logger: logger) { rows.append(row) }
                return rows
            } catch let error as PSQLError {
                throw TaskStoreError.database(PostgresSchema.describe(error))
            }
        }
    }
}
