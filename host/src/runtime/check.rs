//! Checking a component before it runs: what it imports and exports, which
//! imports wtrace provides, which the sandbox would deny, and whether a hook
//! has the right export. Behind `wtrace check`.

use std::path::Path;

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::config::Grants;
use crate::error::Result;
use crate::runtime::Runtime;
use crate::runtime::wave;

/// The world a component is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// A task: WASI, `tracer`, `tasks` and `logs` are provided.
    Task,
    /// A tracing startup hook: WASI, `tracer` and `provider` are provided.
    Hook,
}

/// How wtrace treats one import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportStatus {
    /// Provided and usable.
    Provided,
    /// Provided, but every use is refused unless a flag grants it.
    Denied {
        /// The flag that would grant it.
        grant: String,
    },
    /// Not provided: the component cannot be instantiated.
    Missing,
}

/// One import and its status.
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    /// The import's name (`wasi:cli/stdout@0.2.6`).
    pub name: String,
    /// How wtrace treats it.
    pub status: ImportStatus,
}

/// One export and its type.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    /// The export's name.
    pub name: String,
    /// Its type in WIT syntax.
    #[serde(rename = "type")]
    pub ty: String,
}

/// A resource type a component exports with a constructor: a class of
/// actors, each an instance of it kept alive between calls.
#[derive(Debug, Clone, Serialize)]
pub struct ActorClass {
    /// The resource's name (`counter`), the name `wtrace actor create`
    /// calls its constructor by (`counter(5)`).
    pub name: String,
    /// The exported interface it is in (`counter-api`).
    pub interface: String,
    /// The constructor's type in WIT syntax (`constructor(start: s64)`).
    pub constructor: String,
    /// Its methods (`incr`), typed without their `self`.
    pub methods: Vec<Export>,
}

/// Every actor class `component` exports, in export order.
pub fn actor_classes(engine: &Engine, component: &Component) -> Vec<ActorClass> {
    let mut classes = Vec::new();
    for (interface, item) in component.component_type().exports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let items: Vec<(&str, ComponentItem)> = instance
            .exports(engine)
            .map(|(name, item)| (name, item.ty))
            .collect();
        for (name, item) in &items {
            if !matches!(item, ComponentItem::Resource(_)) {
                continue;
            }
            let constructor = format!("[constructor]{name}");
            let Some(ComponentItem::ComponentFunc(constructor)) = items
                .iter()
                .find(|(n, _)| *n == constructor)
                .map(|(_, i)| i)
            else {
                continue;
            };
            let prefix = format!("[method]{name}.");
            let methods = items
                .iter()
                .filter_map(|(n, item)| match (n.strip_prefix(&prefix), item) {
                    (Some(method), ComponentItem::ComponentFunc(func)) => Some(Export {
                        name: method.to_owned(),
                        ty: wave::describe_method(func),
                    }),
                    _ => None,
                })
                .collect();
            classes.push(ActorClass {
                name: (*name).to_owned(),
                interface: interface.to_owned(),
                constructor: wave::describe_constructor(constructor),
                methods,
            });
        }
    }
    classes
}

/// What `wtrace check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The file checked.
    pub component: String,
    /// Its digest.
    pub digest: String,
    /// The world it was checked against.
    pub world: World,
    /// Every import.
    pub imports: Vec<Import>,
    /// Every export.
    pub exports: Vec<Export>,
    /// The actor classes among them.
    pub actor_classes: Vec<ActorClass>,
    /// Everything that stops it from running.
    pub problems: Vec<String>,
    /// Whether it would run.
    pub ok: bool,
}

/// Checks `bytes` (the file `path`) against `world` under `grants`; for a
/// hook, `hook_export` names the export to call.
pub fn check(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
    world: World,
    hook_export: &str,
    grants: &Grants,
) -> Result<Report> {
    let (digest, component) = runtime.load(path, bytes)?;
    let engine = runtime.engine();
    let imports: Vec<Import> = import_names(engine, &component)
        .into_iter()
        .map(|name| {
            let status = import_status(&name, world, grants);
            Import { name, status }
        })
        .collect();
    let exports: Vec<Export> = component
        .component_type()
        .exports(engine)
        .map(|(name, item)| Export {
            name: name.to_owned(),
            ty: describe(&item.ty),
        })
        .collect();

    let actor_classes = actor_classes(engine, &component);
    let mut problems: Vec<String> = imports
        .iter()
        .filter(|i| i.status == ImportStatus::Missing)
        .map(|i| {
            format!(
                "imports {}, which wtrace does not provide to {}s",
                i.name,
                world.noun()
            )
        })
        .collect();
    if world == World::Hook {
        let expected = format!("{hook_export}: func() -> result<_, string>");
        match exports.iter().find(|e| e.name == hook_export) {
            None => problems.push(format!(
                "has no export `{hook_export}`; a hook exports `{expected}`"
            )),
            Some(export) if export.ty != "func() -> result<_, string>" => problems.push(format!(
                "export `{hook_export}` is `{}`; a hook exports `{expected}`",
                export.ty
            )),
            Some(_) => {}
        }
    } else if !exports.iter().any(|e| e.ty.starts_with("func(")) && actor_classes.is_empty() {
        problems.push(
            "exports no function a task could run and no resource with a constructor an actor \
             could be made of"
                .into(),
        );
    }
    Ok(Report {
        component: path.display().to_string(),
        digest: digest.to_string(),
        world,
        ok: problems.is_empty(),
        imports,
        exports,
        actor_classes,
        problems,
    })
}

impl World {
    fn noun(self) -> &'static str {
        match self {
            World::Task => "task",
            World::Hook => "hook",
        }
    }
}

fn describe(item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentFunc(func) => wave::describe_func(func),
        ComponentItem::ComponentInstance(_) => "interface".into(),
        other => wave::describe_item(other),
    }
}

/// The names of a component's imports.
pub(crate) fn import_names(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The imports of `component` that wtrace does not provide to `world`.
pub(crate) fn missing_imports(engine: &Engine, component: &Component, world: World) -> Vec<String> {
    import_names(engine, component)
        .into_iter()
        .filter(|name| import_status(name, world, &Grants::default()) == ImportStatus::Missing)
        .collect()
}

/// How wtrace treats the import `name` in `world` under `grants`.
pub fn import_status(name: &str, world: World, grants: &Grants) -> ImportStatus {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    let (package, _) = interface.split_once('/').unwrap_or((interface, ""));
    let denied = |grant: &str| ImportStatus::Denied {
        grant: grant.into(),
    };
    match package {
        "wasi:cli" | "wasi:io" | "wasi:clocks" | "wasi:random" if version.starts_with("0.2") => {
            if interface == "wasi:cli/environment" && world == World::Task && grants.env.is_empty()
            {
                // Provided, but the environment is empty.
                denied("--allow-env NAME")
            } else {
                ImportStatus::Provided
            }
        }
        "wasi:filesystem" if version.starts_with("0.2") => {
            if world == World::Task && !grants.dirs.is_empty() {
                ImportStatus::Provided
            } else {
                denied("--allow-dir HOST[:GUEST][:ro]")
            }
        }
        "wasi:sockets" if version.starts_with("0.2") => {
            if world == World::Task && !grants.net.is_empty() {
                ImportStatus::Provided
            } else {
                denied("--allow-net HOST:PORT")
            }
        }
        "wasi:http" if version.starts_with("0.2") && world == World::Task => {
            if grants.http.is_empty() {
                denied("--allow-http HOST[:PORT]")
            } else {
                ImportStatus::Provided
            }
        }
        "wasi:otel" if version == "0.2.0-rc.2" && world == World::Task => match interface {
            "wasi:otel/tracing" | "wasi:otel/logs" | "wasi:otel/types" => ImportStatus::Provided,
            _ => ImportStatus::Missing,
        },
        "wtrace:tracing" if version.starts_with("0.1") => match (interface, world) {
            ("wtrace:tracing/tracer" | "wtrace:tracing/types", _) => ImportStatus::Provided,
            ("wtrace:tracing/tasks" | "wtrace:tracing/logs", World::Task) => ImportStatus::Provided,
            ("wtrace:tracing/provider", World::Hook) => ImportStatus::Provided,
            _ => ImportStatus::Missing,
        },
        _ => ImportStatus::Missing,
    }
}

/// The names of a component's root exports.
pub(crate) fn root_export_names(runtime: &Runtime, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(runtime.engine())
        .map(|(name, _)| name.to_owned())
        .collect()
}

pub(crate) fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_classified() {
        let none = Grants::default();
        assert_eq!(
            import_status("wasi:cli/stdout@0.2.6", World::Task, &none),
            ImportStatus::Provided
        );
        assert_eq!(
            import_status("wtrace:tracing/tasks@0.1.0", World::Task, &none),
            ImportStatus::Provided
        );
        assert_eq!(
            import_status("wtrace:tracing/tasks@0.1.0", World::Hook, &none),
            ImportStatus::Missing
        );
        assert_eq!(
            import_status("wtrace:tracing/provider@0.1.0", World::Task, &none),
            ImportStatus::Missing
        );
        assert_eq!(
            import_status("wtrace:tracing/logs@0.1.0", World::Task, &none),
            ImportStatus::Provided
        );
        assert_eq!(
            import_status("wasi:otel/logs@0.2.0-rc.2", World::Task, &none),
            ImportStatus::Provided
        );
        assert_eq!(
            import_status("wtrace:tracing/logs@0.1.0", World::Hook, &none),
            ImportStatus::Missing,
            "a hook logs by printing: its records have no logger yet"
        );
        assert_eq!(
            import_status("wasi:http/outgoing-handler@0.2.6", World::Hook, &none),
            ImportStatus::Missing
        );
        assert!(matches!(
            import_status("wasi:http/outgoing-handler@0.2.6", World::Task, &none),
            ImportStatus::Denied { grant } if grant.starts_with("--allow-http")
        ));
        assert_eq!(
            import_status("wasi:cli/stdout@0.3.0", World::Task, &none),
            ImportStatus::Missing
        );
        assert!(matches!(
            import_status("wasi:sockets/tcp@0.2.0", World::Task, &none),
            ImportStatus::Denied { grant } if grant.starts_with("--allow-net")
        ));
        let net = Grants {
            net: vec!["*".into()],
            ..Grants::default()
        };
        assert_eq!(
            import_status("wasi:sockets/tcp@0.2.0", World::Task, &net),
            ImportStatus::Provided
        );
        assert!(matches!(
            import_status("wasi:filesystem/preopens@0.2.0", World::Task, &none),
            ImportStatus::Denied { .. }
        ));
    }
}
