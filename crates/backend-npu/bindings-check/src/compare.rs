//! Structural comparison of two bindgen-shaped Rust files: the checked-in
//! bindings against bindgen's output from the vendor's headers.
//!
//! Every item of the checked-in file is looked up by name in the generated
//! one and must agree: constants in type and value, type aliases in their
//! target, opaque structs in being opaque, functions (fields of a
//! dynamic-library struct, or function-pointer type aliases) in every
//! parameter's type and pointer constness, the return type and, for declared
//! functions, the parameter names. Types are compared after resolving each
//! file's own aliases to primitives, so an enum declared `c_int` where the
//! header's is unsigned shows up both at the alias and at every use.

use std::collections::BTreeMap;
use std::fmt;

/// Marks a checked-in item whose header ships in no package (the aclnn
/// operator declarations): it is reported as unchecked, never as missing.
/// Putting it on an item the headers do declare is itself a failure.
pub const UNSHIPPED_MARK: &str = "not in the runtime headers";

/// Checked-in names that the headers spell differently.
pub const RENAMES: [(&str, &str); 1] = [
    // op-plugin's name for the shared second phase `aclnnXxx(workspace, size, executor, stream)`.
    ("aclnnExecuteFn", "OpApiFunc"),
];

/// A function signature with canonical parameter and return types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sig {
    /// `(name, type)`; the name is absent for unnamed parameters.
    pub params: Vec<(Option<String>, String)>,
    /// Return type (`()` when none).
    pub ret: String,
    /// Whether parameter names carry meaning (a declaration, not a typedef from op-plugin).
    pub named: bool,
}

/// One item of a bindings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `pub const N: T = V;`
    Const {
        /// Canonical type.
        ty: String,
        /// Value as written (integers normalised).
        value: String,
    },
    /// `pub type N = T;` for a non-function `T`.
    Alias(String),
    /// An opaque `struct N { _unused: [u8; 0] }`.
    Opaque,
    /// A dynamically loaded function or a function-pointer type.
    Fn(Sig),
}

/// All items of one file, with each item's doc text.
#[derive(Debug, Default)]
pub struct Bindings {
    /// Items by name.
    pub items: BTreeMap<String, Item>,
    /// Doc comments by item name.
    pub docs: BTreeMap<String, String>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The checked-in item.
    pub name: String,
    /// What differs.
    pub what: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.what)
    }
}

/// The result of a comparison.
#[derive(Debug, Default)]
pub struct Report {
    /// Items found equal in the headers.
    pub equal: Vec<String>,
    /// Items marked [`UNSHIPPED_MARK`] and absent from the headers.
    pub unchecked: Vec<String>,
    /// Differences.
    pub mismatches: Vec<Mismatch>,
}

fn canon_prim(last: &str) -> &str {
    match last {
        "c_int" => "i32",
        "c_uint" => "u32",
        "c_short" => "i16",
        "c_ushort" => "u16",
        "c_schar" => "i8",
        "c_uchar" => "u8",
        "c_long" | "c_longlong" => "i64",
        "c_ulong" | "c_ulonglong" => "u64",
        "c_float" => "f32",
        "c_double" => "f64",
        other => other,
    }
}

/// Canonical text of a type: paths reduced to their last segment, C
/// primitives to Rust's (x86_64 Linux sizes; `c_char` kept as is).
pub fn canon_type(ty: &syn::Type) -> Result<String, String> {
    Ok(match ty {
        syn::Type::Ptr(p) => {
            let inner = canon_type(&p.elem)?;
            if p.mutability.is_some() {
                format!("*mut {inner}")
            } else {
                format!("*const {inner}")
            }
        }
        syn::Type::BareFn(f) => fn_text(f)?,
        syn::Type::Path(p) => {
            let seg = p.path.segments.last().ok_or("empty path")?;
            if let Some(f) = bare_fn(ty) {
                // A callback parameter: `Option<unsafe extern "C" fn(...)>`.
                return Ok(format!("Option<{}>", fn_text(f)?));
            }
            if !seg.arguments.is_empty() {
                return Err(format!("unexpected generic type `{}`", quote::quote!(#ty)));
            }
            canon_prim(&seg.ident.to_string()).to_string()
        }
        syn::Type::Tuple(t) if t.elems.is_empty() => "()".to_string(),
        syn::Type::Array(a) => {
            let len = &a.len;
            format!("[{}; {}]", canon_type(&a.elem)?, quote::quote!(#len))
        }
        syn::Type::Reference(r) => {
            let m = if r.mutability.is_some() { "&mut " } else { "&" };
            format!("{m}{}", canon_type(&r.elem)?)
        }
        other => return Err(format!("unsupported type `{}`", quote::quote!(#other))),
    })
}

fn fn_text(f: &syn::TypeBareFn) -> Result<String, String> {
    let s = sig(f, false)?;
    let params: Vec<&str> = s.params.iter().map(|(_, t)| t.as_str()).collect();
    Ok(format!("fn({}) -> {}", params.join(", "), s.ret))
}

fn bare_fn(ty: &syn::Type) -> Option<&syn::TypeBareFn> {
    match ty {
        syn::Type::BareFn(f) => Some(f),
        syn::Type::Path(p) => {
            // `Option<fn>` (bindgen's fn-pointer typedef) or `Result<fn, libloading::Error>` (a dynamic-library field).
            let seg = p.path.segments.last()?;
            if seg.ident != "Option" && seg.ident != "Result" {
                return None;
            }
            let syn::PathArguments::AngleBracketed(args) = &seg.arguments else { return None };
            match args.args.first()? {
                syn::GenericArgument::Type(t) => bare_fn(t),
                _ => None,
            }
        }
        _ => None,
    }
}

fn sig(f: &syn::TypeBareFn, named: bool) -> Result<Sig, String> {
    let mut params = Vec::new();
    for a in &f.inputs {
        let name = a.name.as_ref().map(|(n, _)| n.to_string().trim_start_matches("r#").to_string());
        params.push((name, canon_type(&a.ty)?));
    }
    let ret = match &f.output {
        syn::ReturnType::Default => "()".to_string(),
        syn::ReturnType::Type(_, t) => canon_type(t)?,
    };
    Ok(Sig { params, ret, named })
}

fn value_text(e: &syn::Expr) -> String {
    let text = quote::quote!(#e).to_string().replace(' ', "");
    // `207001u32`, `0x10`, `-1` → one decimal spelling.
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, text.clone()),
    };
    // Drop a type suffix (`u32`, `i64`...) after the digits.
    let parsed = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        let hex: String = h.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '_').filter(|c| *c != '_').collect();
        i128::from_str_radix(&hex, 16).ok()
    } else {
        let dec: String = body.chars().take_while(|c| c.is_ascii_digit() || *c == '_').filter(|c| *c != '_').collect();
        dec.parse::<i128>().ok()
    };
    match parsed {
        Some(v) => (if neg { -v } else { v }).to_string(),
        None => text,
    }
}

fn docs_of(attrs: &[syn::Attribute]) -> String {
    let mut out = String::new();
    for a in attrs {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if nv.path.is_ident("doc") {
                if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value {
                    out.push_str(&s.value());
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn is_opaque(s: &syn::ItemStruct) -> bool {
    match &s.fields {
        syn::Fields::Named(n) => n.named.iter().all(|f| f.ident.as_ref().is_some_and(|i| i.to_string().starts_with("_unused"))),
        syn::Fields::Unit => true,
        syn::Fields::Unnamed(_) => false,
    }
}

/// Parses a bindings file. `strip_typedef_underscore`: in the generated file,
/// function-pointer typedefs named `_aclXxx` (op-plugin's) stand for the
/// function `aclXxx`.
pub fn parse(src: &str, strip_typedef_underscore: bool) -> Result<Bindings, String> {
    let file = syn::parse_file(src).map_err(|e| format!("parse: {e}"))?;
    let mut b = Bindings::default();
    for item in &file.items {
        match item {
            syn::Item::Const(c) => {
                let name = c.ident.to_string();
                b.docs.insert(name.clone(), docs_of(&c.attrs));
                b.items.insert(name, Item::Const { ty: canon_type(&c.ty)?, value: value_text(&c.expr) });
            }
            syn::Item::Type(t) => {
                let mut name = t.ident.to_string();
                b.docs.insert(name.clone(), docs_of(&t.attrs));
                let it = match bare_fn(&t.ty) {
                    Some(f) => {
                        let from_typedef = strip_typedef_underscore && name.starts_with("_acl");
                        if from_typedef {
                            name = name[1..].to_string();
                        }
                        Item::Fn(sig(f, !from_typedef && name != "OpApiFunc")?)
                    }
                    None => Item::Alias(canon_type(&t.ty)?),
                };
                // A declared function wins over op-plugin's typedef of it.
                b.items.entry(name).or_insert(it);
            }
            syn::Item::Struct(s) => {
                let library = matches!(&s.fields, syn::Fields::Named(n) if n.named.iter().any(|f| f.ident.as_ref().is_some_and(|i| i == "__library")));
                if library {
                    let syn::Fields::Named(n) = &s.fields else { unreachable!() };
                    for f in &n.named {
                        let Some(id) = &f.ident else { continue };
                        if id == "__library" {
                            continue;
                        }
                        let f_ty = bare_fn(&f.ty).ok_or_else(|| format!("{}.{id}: not a function field", s.ident))?;
                        b.docs.insert(id.to_string(), docs_of(&f.attrs));
                        b.items.insert(id.to_string(), Item::Fn(sig(f_ty, true)?));
                    }
                } else if is_opaque(s) {
                    b.docs.insert(s.ident.to_string(), docs_of(&s.attrs));
                    b.items.insert(s.ident.to_string(), Item::Opaque);
                } else {
                    b.docs.insert(s.ident.to_string(), docs_of(&s.attrs));
                    b.items.insert(s.ident.to_string(), Item::Alias(format!("struct {}", quote::quote!(#s).to_string().replace(' ', ""))));
                }
            }
            _ => {}
        }
    }
    Ok(b)
}

/// Resolves a canonical type through `b`'s non-function aliases (inside pointers too).
pub fn resolve(b: &Bindings, ty: &str) -> String {
    let mut t = ty.to_string();
    for _ in 0..16 {
        let (prefix, base) = split_ptr(&t);
        match b.items.get(base) {
            Some(Item::Alias(target)) => t = format!("{prefix}{target}"),
            _ => return t,
        }
    }
    t
}

fn split_ptr(t: &str) -> (&str, &str) {
    let mut rest = t;
    while let Some(r) = rest.strip_prefix("*const ").or_else(|| rest.strip_prefix("*mut ")) {
        rest = r;
    }
    (&t[..t.len() - rest.len()], rest)
}

fn compare_sig(name: &str, ours: &Sig, theirs: &Sig, ob: &Bindings, tb: &Bindings, out: &mut Vec<Mismatch>) {
    let mm = |what: String| Mismatch { name: name.to_string(), what };
    if ours.params.len() != theirs.params.len() {
        out.push(mm(format!("{} parameters, the header has {}", ours.params.len(), theirs.params.len())));
        return;
    }
    for (i, ((on, ot), (tn, tt))) in ours.params.iter().zip(&theirs.params).enumerate() {
        let (ro, rt) = (resolve(ob, ot), resolve(tb, tt));
        let label = on.clone().unwrap_or_else(|| format!("#{i}"));
        if ro != rt {
            out.push(mm(format!("parameter {i} `{label}`: `{ot}` (= `{ro}`), the header has `{tt}` (= `{rt}`)")));
        }
        if theirs.named {
            if let (Some(on), Some(tn)) = (on, tn) {
                if on != tn && on.trim_end_matches('_') != tn {
                    out.push(mm(format!("parameter {i} is named `{on}`, the header names it `{tn}`")));
                }
            }
        }
    }
    let (ro, rt) = (resolve(ob, &ours.ret), resolve(tb, &theirs.ret));
    if ro != rt {
        out.push(mm(format!("returns `{}` (= `{ro}`), the header `{}` (= `{rt}`)", ours.ret, theirs.ret)));
    }
}

/// Compares every checked-in item with the header's.
pub fn compare(ours: &Bindings, theirs: &Bindings) -> Report {
    let mut r = Report::default();
    for (name, item) in &ours.items {
        let header_name = RENAMES.iter().find(|(o, _)| o == name).map_or(name.as_str(), |(_, t)| t);
        let marked = ours.docs.get(name).is_some_and(|d| d.contains(UNSHIPPED_MARK));
        let Some(their) = theirs.items.get(header_name) else {
            if marked {
                r.unchecked.push(name.clone());
            } else {
                r.mismatches.push(Mismatch { name: name.clone(), what: "not declared in the headers".into() });
            }
            continue;
        };
        if marked {
            r.mismatches.push(Mismatch {
                name: name.clone(),
                what: format!("marked \"{UNSHIPPED_MARK}\" but the headers declare it; drop the mark"),
            });
        }
        let before = r.mismatches.len();
        match (item, their) {
            (Item::Const { ty: ot, value: ov }, Item::Const { ty: tt, value: tv }) => {
                let (ro, rt) = (resolve(ours, ot), resolve(theirs, tt));
                if ro != rt {
                    r.mismatches
                        .push(Mismatch { name: name.clone(), what: format!("type `{ot}` (= `{ro}`), the header's `{tt}` (= `{rt}`)") });
                }
                if ov != tv {
                    r.mismatches.push(Mismatch { name: name.clone(), what: format!("value {ov}, the header's {tv}") });
                }
            }
            (Item::Alias(ot), Item::Alias(tt)) => {
                let (ro, rt) = (resolve(ours, ot), resolve(theirs, tt));
                if ro != rt {
                    r.mismatches.push(Mismatch { name: name.clone(), what: format!("`{ot}` (= `{ro}`), the header's `{tt}` (= `{rt}`)") });
                }
            }
            (Item::Opaque, Item::Opaque) => {}
            (Item::Fn(os), Item::Fn(ts)) => compare_sig(name, os, ts, ours, theirs, &mut r.mismatches),
            (o, t) => r.mismatches.push(Mismatch { name: name.clone(), what: format!("is {}, the header's is {}", kind(o), kind(t)) }),
        }
        if r.mismatches.len() == before {
            r.equal.push(name.clone());
        }
    }
    r
}

fn kind(i: &Item) -> &'static str {
    match i {
        Item::Const { .. } => "a constant",
        Item::Alias(_) => "a type alias",
        Item::Opaque => "an opaque struct",
        Item::Fn(_) => "a function",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fragment in bindgen's dynamic-loading shape, as generated from a header.
    const HEADER: &str = r#"
        pub type aclError = ::std::os::raw::c_int;
        pub type aclrtStream = *mut ::std::os::raw::c_void;
        pub const ACL_ERROR_BAD_ALLOC: ::std::os::raw::c_int = 200000;
        pub const ACL_ERROR_RT_MEMORY_ALLOCATION: i32 = 207001;
        pub const aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_DEVICE: aclrtMemcpyKind = 3;
        pub type aclrtMemcpyKind = ::std::os::raw::c_uint;
        #[repr(C)] pub struct aclTensor { _unused: [u8; 0] }
        pub type _aclDestroyTensor = ::std::option::Option<unsafe extern "C" fn(tensor: *const aclTensor) -> ::std::os::raw::c_int>;
        pub type OpApiFunc = ::std::option::Option<unsafe extern "C" fn(arg1: *mut ::std::os::raw::c_void, arg2: u64, arg3: *mut aclTensor, arg4: aclrtStream) -> ::std::os::raw::c_int>;
        pub struct Cann {
            __library: ::libloading::Library,
            pub aclrtMemcpy: Result<unsafe extern "C" fn(dst: *mut ::std::os::raw::c_void, destMax: usize, src: *const ::std::os::raw::c_void, count: usize, kind: aclrtMemcpyKind) -> aclError, ::libloading::Error>,
        }
    "#;

    /// The same items as a hand-written checked-in file would spell them.
    const OURS: &str = r#"
        use std::os::raw::{c_int, c_uint, c_void};
        pub type aclError = c_int;
        /// aclnn_base.h (not in the runtime headers)
        pub type aclnnStatus = c_int;
        pub type aclrtStream = *mut c_void;
        pub const ACL_ERROR_BAD_ALLOC: aclError = 200000;
        pub const ACL_ERROR_RT_MEMORY_ALLOCATION: aclError = 207001;
        pub type aclrtMemcpyKind = c_uint;
        pub const aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_DEVICE: aclrtMemcpyKind = 3;
        #[repr(C)] pub struct aclTensor { _unused: [u8; 0] }
        pub struct AscendCl {
            __library: ::libloading::Library,
            pub aclrtMemcpy: Result<unsafe extern "C" fn(dst: *mut c_void, destMax: usize, src: *const c_void, count: usize, kind: aclrtMemcpyKind) -> aclError, ::libloading::Error>,
        }
        pub struct NnopBase {
            __library: ::libloading::Library,
            pub aclDestroyTensor: Result<unsafe extern "C" fn(tensor: *const aclTensor) -> aclnnStatus, ::libloading::Error>,
        }
        pub type aclnnExecuteFn = unsafe extern "C" fn(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclTensor, stream: aclrtStream) -> aclnnStatus;
        /// From an operator header (not in the runtime headers).
        pub type aclnnFooFn = unsafe extern "C" fn(out: *mut aclTensor) -> aclnnStatus;
    "#;

    fn run(ours: &str) -> Report {
        compare(&parse(ours, false).unwrap(), &parse(HEADER, true).unwrap())
    }

    #[test]
    fn identical_items_pass_and_marked_operators_are_unchecked() {
        let r = run(OURS);
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!(r.unchecked, vec!["aclnnFooFn".to_string(), "aclnnStatus".to_string()]);
        for n in ["aclrtMemcpy", "aclDestroyTensor", "aclnnExecuteFn", "ACL_ERROR_BAD_ALLOC", "aclTensor", "aclrtMemcpyKind"] {
            assert!(r.equal.contains(&n.to_string()), "{n} not compared equal: {:?}", r.equal);
        }
    }

    fn expect_mismatch(ours: &str, name: &str, needle: &str) {
        let r = run(ours);
        assert!(
            r.mismatches.iter().any(|m| m.name == name && m.what.contains(needle)),
            "expected a `{needle}` mismatch on {name}, got {:?}",
            r.mismatches
        );
    }

    #[test]
    fn signedness_of_an_enum_is_caught_at_the_alias_and_at_its_uses() {
        let bad = OURS.replace("pub type aclrtMemcpyKind = c_uint;", "pub type aclrtMemcpyKind = c_int;");
        expect_mismatch(&bad, "aclrtMemcpyKind", "`i32` (= `i32`), the header's `u32`");
        expect_mismatch(&bad, "aclrtMemcpy", "parameter 4 `kind`");
        expect_mismatch(&bad, "aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_DEVICE", "type");
    }

    #[test]
    fn pointer_constness_is_caught() {
        let bad = OURS.replace("src: *const c_void", "src: *mut c_void");
        expect_mismatch(&bad, "aclrtMemcpy", "parameter 2 `src`: `*mut c_void`");
        let bad = OURS.replace("fn(tensor: *const aclTensor)", "fn(tensor: *mut aclTensor)");
        expect_mismatch(&bad, "aclDestroyTensor", "*mut aclTensor");
    }

    #[test]
    fn values_arity_names_and_missing_items_are_caught() {
        expect_mismatch(&OURS.replace("= 207001;", "= 207000;"), "ACL_ERROR_RT_MEMORY_ALLOCATION", "value 207000, the header's 207001");
        expect_mismatch(&OURS.replace(", count: usize, kind", ", kind"), "aclrtMemcpy", "4 parameters, the header has 5");
        expect_mismatch(&OURS.replace("destMax: usize", "dstMax: usize"), "aclrtMemcpy", "named `dstMax`");
        let extra = format!("{OURS}\npub const ACL_ERROR_NOT_THERE: aclError = 1;");
        expect_mismatch(&extra, "ACL_ERROR_NOT_THERE", "not declared");
        let wrongly_marked =
            OURS.replace("pub const ACL_ERROR_BAD_ALLOC", "/// (not in the runtime headers)\npub const ACL_ERROR_BAD_ALLOC");
        expect_mismatch(&wrongly_marked, "ACL_ERROR_BAD_ALLOC", "drop the mark");
    }

    #[test]
    fn return_types_and_kinds_are_compared() {
        let bad = OURS.replace("count: usize, kind: aclrtMemcpyKind) -> aclError", "count: usize, kind: aclrtMemcpyKind) -> u64");
        expect_mismatch(&bad, "aclrtMemcpy", "returns `u64`");
        let bad = OURS.replace("#[repr(C)] pub struct aclTensor { _unused: [u8; 0] }", "pub type aclTensor = c_void;");
        expect_mismatch(&bad, "aclTensor", "is a type alias, the header's is an opaque struct");
    }

    #[test]
    fn literals_are_normalised() {
        let b = parse("pub const A: u32 = 0x10; pub const B: i32 = -1; pub const C: u32 = 207001u32;", false).unwrap();
        let v = |n: &str| match &b.items[n] {
            Item::Const { value, .. } => value.clone(),
            _ => unreachable!(),
        };
        assert_eq!((v("A"), v("B"), v("C")), ("16".to_string(), "-1".to_string(), "207001".to_string()));
    }
}
