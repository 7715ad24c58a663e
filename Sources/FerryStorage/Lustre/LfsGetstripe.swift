import Foundation

/// One stripe object of a layout.
public struct LustreStripeObject: Equatable, Sendable {
    public var ostIndex: Int
    /// Composite and YAML forms: the object's FID as printed, without brackets
    /// ("0x100000000:0x2:0x0"). Plain `obdidx` table: the hexadecimal objid column ("0x2").
    public var objectID: String?
    /// Plain `obdidx` table only: the "group" column (the object sequence) as printed.
    public var group: String?

    public init(ostIndex: Int, objectID: String? = nil, group: String? = nil) {
        self.ostIndex = ostIndex
        self.objectID = objectID
        self.group = group
    }
}

/// A plain (`lmm_*`) layout, on its own or as one component's sub-layout.
public struct LustreStripeLayout: Equatable, Sendable {
    public var stripeCount: Int
    /// 0 for a self-extending (SEL) extension component, which prints `lmm_extension_size`.
    public var stripeSize: UInt64
    /// Normalized words: "raid0", "mdt", "raid0,released", "raid0,overstriped"… Numeric
    /// patterns (older lfs printed the value in hex, e.g. "1" or "80000001") become words.
    public var pattern: String
    /// `lmm_stripe_offset` (or `lmm_mdt_index` for Data-on-MDT); -1 when not printed.
    public var stripeOffset: Int
    public var pool: String?
    public var objects: [LustreStripeObject]
    /// `lmm_extension_size` of a SEL extension component, in bytes.
    public var extensionSize: UInt64?

    public init(
        stripeCount: Int, stripeSize: UInt64, pattern: String, stripeOffset: Int, pool: String? = nil,
        objects: [LustreStripeObject] = [], extensionSize: UInt64? = nil
    ) {
        self.stripeCount = stripeCount
        self.stripeSize = stripeSize
        self.pattern = pattern
        self.stripeOffset = stripeOffset
        self.pool = pool
        self.objects = objects
        self.extensionSize = extensionSize
    }

    var patternWords: [Substring] { pattern.split(separator: ",") }
}

/// One component (`lcme_*`) of a composite (PFL, FLR, SEL) layout.
public struct LustreLayoutComponent: Equatable, Sendable {
    /// `lcme_id`; -1 when lfs prints "N/A" (a template without an ID).
    public var id: Int
    public var mirrorID: Int?
    /// `lcme_flags` split on ',' ("init", "prefer", "stale"…); empty when lfs prints "0".
    public var flags: [String]
    public var extentStart: UInt64
    /// nil = EOF.
    public var extentEnd: UInt64?
    public var layout: LustreStripeLayout

    public init(id: Int, mirrorID: Int? = nil, flags: [String], extentStart: UInt64, extentEnd: UInt64?, layout: LustreStripeLayout) {
        self.id = id
        self.mirrorID = mirrorID
        self.flags = flags
        self.extentStart = extentStart
        self.extentEnd = extentEnd
        self.layout = layout
    }
}

public enum LustreFileLayout: Equatable, Sendable {
    case plain(LustreStripeLayout)
    case composite(layoutGeneration: Int, mirrorCount: Int?, components: [LustreLayoutComponent])

    public var isComposite: Bool {
        if case .composite = self { return true }
        return false
    }

    /// Some (component's) pattern is "mdt": part of the data lives on the MDT (Data-on-MDT).
    public var hasDataOnMDT: Bool {
        switch self {
        case .plain(let layout): return layout.patternWords.contains("mdt")
        case .composite(_, _, let components): return components.contains { $0.layout.patternWords.contains("mdt") }
        }
    }
}

public struct LustreGetstripeEntry: Equatable, Sendable {
    /// The path line lfs prints before each file's layout; nil when it printed none.
    public var path: String?
    public var layout: LustreFileLayout

    public init(path: String?, layout: LustreFileLayout) {
        self.path = path
        self.layout = layout
    }
}

/// Reads `lfs getstripe` output (layout printing is in lustre-release `liblustreapi.c`:
/// `lov_dump_user_lmm_header()`, `lov_dump_comp_v1_header()`, `lov_dump_comp_v1_entry()`).
public enum LfsGetstripeParser {
    static let command = "lfs getstripe"

    /// Plain (`lmm_*` + `obdidx` table) and composite (`lcm_*`, `lcme_*`, `lmm_objects:` lists)
    /// forms, for one or several files (each starts with its path line). Directories' default
    /// layouts ("stripe_count: 1 stripe_size: …" on one line) and "has no stripe info" files
    /// are skipped.
    public static func parse(_ text: String) throws(LustreParseError) -> [LustreGetstripeEntry] {
        var reader = LustreGetstripeReader(yaml: false)
        let entries = try reader.read(text)
        guard !entries.isEmpty else { throw LustreParseError(command: command, reason: "no file layout found") }
        return entries
    }

    /// `lfs getstripe --yaml FILE` (one file; composite with `components:`/`sub_layout:`, or plain).
    public static func parseYAML(_ text: String) throws(LustreParseError) -> LustreFileLayout {
        var reader = LustreGetstripeReader(yaml: true)
        let entries = try reader.read(text)
        guard entries.count == 1, let only = entries.first else {
            throw LustreParseError(command: command, reason: entries.isEmpty ? "no layout found" : "more than one layout")
        }
        return only.layout
    }

    /// "raid0", "1" → "raid0"; "100" → "mdt"; "80000001" → "raid0,released". Bare numbers are
    /// hexadecimal ("%x" in liblustreapi.c). Bits (lustre_user.h): RAID0 0x1, RAID1 0x2,
    /// PARITY 0x4, MDT 0x100, OVERSTRIPING 0x200, FOREIGN 0x400, COMPRESS 0x800,
    /// F_HOLE 0x40000000, F_RELEASED 0x80000000.
    static func normalizePattern(_ raw: String) -> String? {
        let t = raw.lowercased()
        let hex = t.hasPrefix("0x") ? String(t.dropFirst(2)) : t
        if !hex.isEmpty, hex.count <= 8, hex.allSatisfy(\.isHexDigit), !t.contains(where: { $0 > "f" }),
            let value = UInt32(hex, radix: 16)
        {
            if value == 0 { return "none" }
            let names: [(UInt32, String)] = [
                (0x100, "mdt"), (0x1, "raid0"), (0x2, "raid1"), (0x4, "parity"), (0x200, "overstriped"),
                (0x400, "foreign"), (0x800, "compress"), (0x8000_0000, "released"), (0x4000_0000, "hole"),
            ]
            var words: [String] = []
            var left = value
            for (bit, name) in names where value & bit != 0 {
                words.append(name)
                left &= ~bit
            }
            if left != 0 { words.append("0x" + String(left, radix: 16)) }
            return words.joined(separator: ",")
        }
        guard !t.isEmpty, t.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "," || $0 == "_") }) else {
            return nil
        }
        return t
    }
}
