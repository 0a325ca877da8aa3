//! Actors from a driver: create one on the cluster, call its methods, end
//! it. Each is a submission the head routes to the actor's worker, traced
//! as `<class>.new submit` / `<class>.<method> submit`.

use opentelemetry::trace::{Span as _, TraceContextExt as _};
use tokio::sync::oneshot;

use super::{Client, TaskRef};
use crate::cluster::messages::{ActorOp, ActorStatus, FromDriver, Submission};
use crate::error::{Error, Result};
use crate::exec::task::record_error;
use crate::outcome::{TaskError, TaskErrorKind};
use crate::runtime::Digest;
use crate::runtime::wave::Invocation;
use crate::telemetry::context::WireContext;
use crate::telemetry::task_span::{self, ActorOfSpan, SubmitSpan};

/// An actor on the cluster. Calls made through it, or through any handle
/// on the same actor, run one at a time in the order the cluster got them.
#[derive(Debug, Clone)]
pub struct ActorHandle {
    client: Client,
    id: String,
    class: String,
    component: Digest,
    component_name: String,
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Calls a method (`incr(2)`, without `self`) inside a
    /// `<class>.<method> submit` span, a child of `parent`'s span.
    pub async fn call(
        &self,
        invocation: &Invocation,
        parent: &opentelemetry::Context,
    ) -> Result<TaskRef> {
        let op = ActorOp::Call {
            id: self.id.clone(),
        };
        self.client.submit_actor_op(self, invocation, op, parent)
    }

    /// Ends the actor after the calls made before; its destructor runs.
    pub async fn kill(&self, parent: &opentelemetry::Context) -> Result<()> {
        let op = ActorOp::Kill {
            id: self.id.clone(),
        };
        let kill = Invocation {
            function: "kill".into(),
            text: "kill()".into(),
        };
        let done = self
            .client
            .submit_actor_op(self, &kill, op, parent)?
            .get()
            .await?;
        done.value.map(drop).map_err(Error::Task)
    }
}

/// How to make an actor.
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    /// A name usable in place of its id, unique in the cluster.
    pub name: Option<String>,
    /// How many times the cluster makes it again by its constructor (its
    /// state lost) after a call traps, times out or runs out of fuel, or
    /// its worker dies; 0: it stays dead.
    pub max_restarts: u32,
}

impl Client {
    /// Makes an actor of a class `component` exports, by calling its
    /// constructor (`counter(5)`: the class's name and the constructor's
    /// arguments) on some worker, inside a `<class>.new submit` span.
    /// Returns once the actor exists; an error says why it could not be
    /// made.
    pub async fn create_actor(
        &self,
        component: &Digest,
        invocation: &Invocation,
        options: ActorOptions,
        parent: &opentelemetry::Context,
    ) -> Result<ActorHandle> {
        let component_name = self.component_name(component)?;
        let handle = ActorHandle {
            client: self.clone(),
            id: format!("{}-{}", invocation.function, crate::ids::random_hex(8)),
            class: invocation.function.clone(),
            component: *component,
            component_name,
        };
        let op = ActorOp::Create {
            id: handle.id.clone(),
            name: options.name,
            max_restarts: options.max_restarts,
            restarts: 0,
        };
        let done = self
            .submit_actor_op(&handle, invocation, op, parent)?
            .get()
            .await?;
        done.value.map_err(Error::Task)?;
        Ok(handle)
    }

    /// A handle on an actor made before, by any driver: by its id or name.
    pub async fn actor(&self, id_or_name: &str) -> Result<ActorHandle> {
        let actors = self.status().await?.actors;
        let found = actors
            .into_iter()
            .find(|a| a.id == id_or_name || a.name.as_deref() == Some(id_or_name))
            .ok_or_else(|| {
                Error::Cluster(format!(
                    "no actor {id_or_name:?} in this cluster (see `wtrace actor list`)"
                ))
            })?;
        Ok(ActorHandle {
            client: self.clone(),
            id: found.id,
            class: found.class,
            component: found.digest,
            component_name: found.component,
        })
    }

    /// The cluster's actors, live and dead.
    pub async fn actors(&self) -> Result<Vec<ActorStatus>> {
        Ok(self.status().await?.actors)
    }

    /// The file name of a component this client uploaded.
    pub(super) fn component_name(&self, component: &Digest) -> Result<String> {
        self.inner
            .components
            .lock()
            .unwrap()
            .get(component)
            .cloned()
            .ok_or_else(|| {
                Error::Cluster(format!(
                    "component {component} was not uploaded by this client"
                ))
            })
    }

    fn submit_actor_op(
        &self,
        actor: &ActorHandle,
        invocation: &Invocation,
        op: ActorOp,
        parent: &opentelemetry::Context,
    ) -> Result<TaskRef> {
        let method = match &op {
            ActorOp::Create { .. } => "new",
            ActorOp::Call { .. } | ActorOp::Find { .. } => invocation.function.as_str(),
            ActorOp::Kill { .. } => "kill",
        };
        let function = format!("{}.{method}", actor.class);
        let tag = self
            .inner
            .next_tag
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task_id = format!("{}-{tag}", self.inner.driver_id);
        let mut span = self.inner.telemetry.as_ref().map(|telemetry| {
            task_span::start_submit(
                telemetry.tracer(),
                SubmitSpan {
                    function: &function,
                    component: crate::attrs::text(actor.component_name.as_str()),
                    digest: crate::attrs::text(actor.component.to_string()),
                    task_id: &task_id,
                    depth: None,
                    actor: Some(ActorOfSpan {
                        id: &actor.id,
                        class: &actor.class,
                        method,
                    }),
                },
                parent,
            )
        });
        let context = span
            .as_ref()
            .map(|s| s.span_context().clone())
            .unwrap_or_else(|| parent.span().span_context().clone());
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(tag, tx);
        let sent = self.request(FromDriver::Submit(vec![Submission {
            tag,
            task_id: task_id.clone(),
            component: actor.component,
            function: function.clone(),
            invocation: invocation.text.clone(),
            trace: WireContext::of(&context),
            parent: None,
            actor: Some(op),
        }]));
        if let Some(span) = &mut span {
            if let Err(error) = &sent {
                record_error(
                    span,
                    &TaskError::new(TaskErrorKind::Cluster, "submit", error.to_string()),
                );
            }
            span.end();
        }
        if let Err(error) = sent {
            self.inner.pending.lock().unwrap().remove(&tag);
            return Err(error);
        }
        Ok(TaskRef {
            tag,
            function,
            task_id,
            rx,
        })
    }
}
