import Foundation

// The line reader behind LfsGetstripeParser: one pass over the lines, filling drafts of
// each file's layout, checked and turned into the public types when the file ends.

struct LustreLayoutDraft {
    var stripeCount: Int?
    var stripeSize: UInt64?
    var extensionSize: UInt64?
    var pattern: String?
    var stripeOffset: Int?
    var pool: String?
    var objects: [LustreStripeObject] = []
    var touched = false
}

struct LustreComponentDraft {
    var line: Int
    var id: Int
    var mirrorID: Int?
    var flags: [String]?
    var start: UInt64?
    var end: UInt64??
    var layout = LustreLayoutDraft()
}

struct LustreEntryDraft {
    var path: String?
    var line: Int
    var composite = false
    var layoutGen: Int?
    var mirrorCount: Int?
    var plain = LustreLayoutDraft()
    var components: [LustreComponentDraft] = []
    var directory = false
    var noStripeInfo = false
}

struct LustreGetstripeReader {
    let yaml: Bool
    var entries: [LustreGetstripeEntry] = []
    var current: LustreEntryDraft?
    var inTable = false

    init(yaml: Bool) { self.yaml = yaml }

    mutating func read(_ text: String) throws(LustreParseError) -> [LustreGetstripeEntry] {
        for line in LustreText.lines(text) { try take(line) }
        try finish()
        return entries
    }

    mutating func take(_ line: LustreLine) throws(LustreParseError) {
        let n = line.number
        var t = line.trimmed
        if t.isEmpty {
            inTable = false
            return
        }
        if !yaml, let first = line.text.first, !LustreText.isSpace(first), !isLayoutLine(t) {
            try finish()  // a path line starts the next file
            current = LustreEntryDraft(path: line.text, line: n)
            current?.noStripeInfo = line.text.hasSuffix(" has no stripe info")
            inTable = false
            return
        }
        if current == nil { current = LustreEntryDraft(path: nil, line: n) }
        if current?.directory == true { return }  // the rest of a directory's layout or MDT table
        if Self.isDirectoryLine(t) {
            current?.directory = true  // a directory's (default) layout: not a file
            return
        }
        if t.hasPrefix("obdidx") {
            guard current?.composite == false else { throw getstripeFail(n, "an obdidx table inside a composite layout") }
            inTable = true
            return
        }
        let fields = line.fields
        if inTable, let first = fields.first, LustreText.integer(first) != nil {
            guard fields.count == 4 || (fields.count == 5 && fields[4] == "*"),
                let index = LustreText.integer(fields[0]), LustreText.unsigned(fields[1]) != nil
            else { throw getstripeFail(n, "malformed obdidx table row \"\(t)\"") }
            try addObject(LustreStripeObject(ostIndex: index, objectID: fields[2], group: fields[3]), line: n)
            return
        }
        inTable = false
        if t.hasPrefix("- "), t.contains("{"), t.contains("l_ost_idx:") {
            try addObject(try braceObject(t, line: n), line: n)
            return
        }
        if t.hasPrefix("- ") { t = LustreText.trim(t.dropFirst(2)) }
        guard let (key, value) = LustreText.keyValue(t) else { throw getstripeFail(n, "unrecognized line \"\(t)\"") }
        try apply(key: key, value: value, line: n)
    }

    func isLayoutLine(_ line: String) -> Bool {
        let t = line.hasPrefix("- ") ? LustreText.trim(line.dropFirst(2)) : line
        if Self.isDirectoryLine(t) { return true }
        guard let (key, value) = LustreText.keyValue(t) else { return false }
        if ["components", "composite_header", "sub_layout"].contains(key) { return value.isEmpty }
        return key.hasPrefix("lmm_") || key.hasPrefix("lcm_") || key.hasPrefix("lcme_")
    }

    /// A directory's layout: "stripe_count: 1 stripe_size: …" (no "lmm_" prefix for
    /// directories), "(Default) …", a striped directory's "lmv_…" line or its "mdtidx" table.
    static func isDirectoryLine(_ t: String) -> Bool {
        ["stripe_count:", "(Default)", "lmv_", "mdtidx"].contains { t.hasPrefix($0) }
    }

    /// "- 0: { l_ost_idx: 0, l_fid: [0x100000000:0x2:0x0] }" (lfs ≥2.16 pads with "%3d").
    func braceObject(_ t: String, line n: Int) throws(LustreParseError) -> LustreStripeObject {
        guard let open = t.firstIndex(of: "{"), let close = t.lastIndex(of: "}"), open < close else {
            throw getstripeFail(n, "malformed object line \"\(t)\"")
        }
        var index: Int?
        var fid: String?
        for part in t[t.index(after: open)..<close].split(separator: ",") {
            guard let (key, value) = LustreText.keyValue(LustreText.trim(part)) else {
                throw getstripeFail(n, "malformed object field \"\(part)\"")
            }
            if key == "l_ost_idx" { index = LustreText.integer(value) }
            if key == "l_fid" { fid = Self.stripBrackets(value) }
        }
        guard let index else { throw getstripeFail(n, "object line without a valid l_ost_idx: \"\(t)\"") }
        return LustreStripeObject(ostIndex: index, objectID: fid)
    }

    static func stripBrackets(_ s: String) -> String {
        s.hasPrefix("[") && s.hasSuffix("]") && s.count >= 2 ? String(s.dropFirst().dropLast()) : s
    }

    mutating func addObject(_ object: LustreStripeObject, line n: Int) throws(LustreParseError) {
        try withLayout(line: n) { (layout: inout LustreLayoutDraft) in layout.objects.append(object) }
    }

    /// Runs `body` on the layout that lmm_* lines currently fill: the plain layout, or the
    /// last component's sub-layout.
    mutating func withLayout(line n: Int, _ body: (inout LustreLayoutDraft) throws(LustreParseError) -> Void)
        throws(LustreParseError)
    {
        guard var entry = current else { throw getstripeFail(n, "layout data before any file") }
        if entry.composite {
            guard var last = entry.components.popLast() else {
                throw getstripeFail(n, "a sub-layout line before the first lcme_id")
            }
            try body(&last.layout)
            last.layout.touched = true
            entry.components.append(last)
        } else {
            try body(&entry.plain)
            entry.plain.touched = true
        }
        current = entry
    }

    mutating func apply(key: String, value: String, line n: Int) throws(LustreParseError) {
        func int(_ v: String) throws(LustreParseError) -> Int {
            guard let x = LustreText.integer(v) else { throw getstripeFail(n, "\(key): \"\(v)\" is not a number") }
            return x
        }
        func uint(_ v: String) throws(LustreParseError) -> UInt64 {
            guard let x = LustreText.unsigned(v) else { throw getstripeFail(n, "\(key): \"\(v)\" is not a number") }
            return x
        }
        func once<T>(_ old: T?, _ new: T) throws(LustreParseError) -> T {
            guard old == nil else { throw getstripeFail(n, "\(key) appears twice in one layout") }
            return new
        }
        switch key {
        case "components", "composite_header", "sub_layout", "lmm_objects":
            return
        case "lcm_layout_gen":
            current?.composite = true
            let gen = try once(current?.layoutGen, try int(value))
            current?.layoutGen = gen
        case "lcm_mirror_count":
            current?.composite = true
            let count = try once(current?.mirrorCount, try int(value))
            current?.mirrorCount = count
        case "lcme_id":
            current?.composite = true
            let id = value == "N/A" ? -1 : try int(value)
            current?.components.append(LustreComponentDraft(line: n, id: id))
        case "l_ost_idx":  // YAML object list: "- l_ost_idx: 0" then "l_fid: …"
            try addObject(LustreStripeObject(ostIndex: try int(value)), line: n)
        case "l_fid":
            let fid = Self.stripBrackets(value)
            try withLayout(line: n) { (layout: inout LustreLayoutDraft) throws(LustreParseError) in
                guard let last = layout.objects.indices.last, layout.objects[last].objectID == nil else {
                    throw getstripeFail(n, "l_fid without an l_ost_idx before it")
                }
                layout.objects[last].objectID = fid
            }
        case _ where key.hasPrefix("lcm_"):
            current?.composite = true  // lcm_entry_count, lcm_magic, lcm_size, lcm_flags
        case _ where key.hasPrefix("lcme_"):
            guard var entry = current, entry.composite, var c = entry.components.popLast() else {
                throw getstripeFail(n, "\(key) before the first lcme_id")
            }
            switch key {
            case "lcme_mirror_id": c.mirrorID = try once(c.mirrorID, try int(value))
            case "lcme_flags":
                let flags = value == "0" ? [] : value.split(separator: ",").map(String.init)
                c.flags = try once(c.flags, flags)
            case "lcme_extent.e_start": c.start = try once(c.start, try uint(value))
            case "lcme_extent.e_end":
                guard c.end == nil else { throw getstripeFail(n, "\(key) appears twice in one component") }
                c.end = .some(value == "EOF" ? nil : try uint(value))
            default: break  // lcme_offset, lcme_size, lcme_timestamp, lcme_mirror_link_id…
            }
            entry.components.append(c)
            current = entry
        case "lmm_stripe_count": try setOnce(\.stripeCount, try int(value), key: key, line: n)
        case "lmm_stripe_size": try setOnce(\.stripeSize, try uint(value), key: key, line: n)
        case "lmm_extension_size": try setOnce(\.extensionSize, try uint(value), key: key, line: n)
        case "lmm_stripe_offset", "lmm_mdt_index": try setOnce(\.stripeOffset, try int(value), key: key, line: n)
        case "lmm_pattern":
            guard let p = LfsGetstripeParser.normalizePattern(value) else {
                throw getstripeFail(n, "unknown pattern \"\(value)\"")
            }
            try setOnce(\.pattern, p, key: key, line: n)
        case "lmm_pool":
            guard !value.isEmpty else { throw getstripeFail(n, "empty lmm_pool") }
            try setOnce(\.pool, value, key: key, line: n)
        case _ where key.hasPrefix("lmm_"):
            // lmm_layout_gen, lmm_magic, lmm_seq, lmm_object_id, lmm_fid: not kept.
            try withLayout(line: n) { (_: inout LustreLayoutDraft) in }
        default:
            throw getstripeFail(n, "unrecognized key \"\(key)\"")
        }
    }

    /// Sets one field of the current layout, refusing a second value for it.
    mutating func setOnce<T>(_ field: WritableKeyPath<LustreLayoutDraft, T?>, _ value: T, key: String, line n: Int)
        throws(LustreParseError)
    {
        try withLayout(line: n) { (layout: inout LustreLayoutDraft) throws(LustreParseError) in
            guard layout[keyPath: field] == nil else { throw getstripeFail(n, "\(key) appears twice in one layout") }
            layout[keyPath: field] = value
        }
    }

    func build(_ d: LustreLayoutDraft, line n: Int, what: String) throws(LustreParseError) -> LustreStripeLayout {
        guard let count = d.stripeCount else { throw getstripeFail(n, "\(what) has no lmm_stripe_count") }
        guard let pattern = d.pattern else { throw getstripeFail(n, "\(what) has no lmm_pattern") }
        guard let size = d.stripeSize ?? (d.extensionSize == nil ? nil : 0) else {
            throw getstripeFail(n, "\(what) has no lmm_stripe_size")
        }
        return LustreStripeLayout(
            stripeCount: count, stripeSize: size, pattern: pattern, stripeOffset: d.stripeOffset ?? -1,
            pool: d.pool, objects: d.objects, extensionSize: d.extensionSize)
    }

    mutating func finish() throws(LustreParseError) {
        guard let e = current else { return }
        current = nil
        inTable = false
        let name = e.path.map { "the layout of \"\($0)\"" } ?? "the layout"
        if e.directory || e.noStripeInfo { return }  // not a file with a layout of its own
        if e.composite {
            guard let gen = e.layoutGen else { throw getstripeFail(e.line, "\(name) has no lcm_layout_gen") }
            guard !e.components.isEmpty else { throw getstripeFail(e.line, "\(name) has no components") }
            var components: [LustreLayoutComponent] = []
            for c in e.components {
                guard let start = c.start, let end = c.end else {
                    throw getstripeFail(c.line, "component \(c.id) has no lcme_extent.e_start/e_end")
                }
                guard c.layout.touched else { throw getstripeFail(c.line, "component \(c.id) has no sub-layout") }
                let layout = try build(c.layout, line: c.line, what: "component \(c.id)")
                components.append(
                    LustreLayoutComponent(
                        id: c.id, mirrorID: c.mirrorID, flags: c.flags ?? [], extentStart: start, extentEnd: end,
                        layout: layout))
            }
            entries.append(
                LustreGetstripeEntry(
                    path: e.path, layout: .composite(layoutGeneration: gen, mirrorCount: e.mirrorCount, components: components)))
        } else if e.plain.touched {
            entries.append(LustreGetstripeEntry(path: e.path, layout: .plain(try build(e.plain, line: e.line, what: name))))
        } else {
            throw getstripeFail(e.line, e.path.map { "no layout follows the path line \"\($0)\"" } ?? "no layout found")
        }
    }
}

func getstripeFail(_ line: Int?, _ reason: String) -> LustreParseError {
    LustreParseError(command: LfsGetstripeParser.command, line: line, reason: reason)
}
