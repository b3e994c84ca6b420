//! Jobs in the state machine: a job's tasks are made and queued in one change, counted by
//! state as they move, killed together, and kept together: a job's tasks are removed only
//! once the whole job has been over for `task_retention`, so that its results stay whole.
//!
//! Counting is by the four places a task's state changes (placement, the start of its run,
//! the end of an attempt, a retry), each of which tells [`moved`]; a job ends in the change
//! in which its last task ends for good. Once `max_failures` of its tasks failed (FAILED or
//! LOST for good), the others are killed, and the job fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{public, unknown_module, Effects, HostState, Now};
use crate::convert::bounds;
use crate::error::HostError;
use crate::job::{
    self, Job, JobId, JobMember, JobRequest, JobState, MAX_JOB_BYTES, MAX_JOB_STDIN_BYTES,
};
use crate::store::Write;
use crate::task::{Task, TaskId, TaskSpec, TaskState};

/// A job and its tasks, counted.
#[derive(Clone, Debug)]
pub(super) struct JobEntry {
    pub(super) job: Job,
    /// Its tasks by state, indexed as [`TaskState::ALL`].
    pub(super) counts: [u32; 7],
    /// Its tasks that ended for good; of those, the ones that failed (FAILED or LOST).
    pub(super) ended: u32,
    pub(super) failures: u32,
    /// `max_failures` was reached: the rest were killed.
    pub(super) stopping: bool,
    /// Fuel its tasks that ended used.
    pub(super) fuel_used: u64,
    /// Its tasks kept (not yet removed past their retention).
    pub(super) kept: u32,
}

impl JobEntry {
    fn view(&self) -> JobView {
        JobView {
            job: self.job.clone(),
            counts: self.counts,
            fuel_used: self.fuel_used,
        }
    }
}

/// A job as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// The job.
    pub job: Job,
    /// Its tasks by state, indexed as [`TaskState::ALL`].
    pub counts: [u32; 7],
    /// Fuel its tasks that ended used, in all.
    pub fuel_used: u64,
}

/// A job accepted: as clients see it, and about what its tasks take on disk.
#[derive(Clone, Debug)]
pub struct SubmittedJob {
    /// The job.
    pub view: JobView,
    /// Bytes its tasks take as stored, about (0 when it existed).
    pub stored_bytes: u64,
    /// Its idempotency key named it: this submit made nothing.
    pub existed: bool,
}

/// Task `task`, of a job or not, moves from its state to `to`.
pub(super) fn moved(jobs: &mut BTreeMap<JobId, JobEntry>, task: &Task, to: TaskState) {
    if let Some(entry) = task.job.as_ref().and_then(|m| jobs.get_mut(&m.job)) {
        let from = &mut entry.counts[task.state.index()];
        *from = from.saturating_sub(1);
        entry.counts[to.index()] += 1;
    }
}

fn unknown_job(id: JobId) -> HostError {
    HostError::NotFound(format!("no job {id}"))
}

impl HostState {
    /// Records a job of tasks made from `template` (see [`job::task_spec`]), all PENDING, in
    /// one change. Refused as a task would be (its module, where it could run, its tenant's
    /// queue cap counting every task of the job), when its shape or a task made from it is out
    /// of bounds, when its tasks together would pass [`MAX_JOB_BYTES`], or by `room`, asked
    /// with what they take on disk once they are made. Nothing is changed unless it is
    /// accepted.
    pub fn submit_job(
        &mut self,
        request: JobRequest,
        room: impl FnOnce(u64) -> Result<(), HostError>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<SubmittedJob, HostError> {
        let JobRequest {
            template,
            tasks,
            max_failures,
            idempotency_key,
            sha256,
        } = request;
        let key = idempotency_key.map(|k| (template.tenant.clone(), k));
        if let Some((key, &id)) = key.as_ref().and_then(|k| Some((k, self.job_keys.get(k)?))) {
            // As Stripe's keys: the same key with another request is a client's mistake.
            let shown = crate::convert::shown(&key.1);
            return match self.jobs.get(&id) {
                Some(entry) if entry.job.request_sha256 == sha256 => Ok(SubmittedJob {
                    view: entry.view(),
                    stored_bytes: 0,
                    existed: true,
                }),
                Some(_) => Err(HostError::FailedPrecondition(format!(
                    "idempotency key {shown} was used for job {id} with a different request; \
                     use a new key for a new job"
                ))),
                None => Err(HostError::FailedPrecondition(format!(
                    "idempotency key {shown} names job {id}, whose record could not be loaded \
                     (see the host's log)"
                ))),
            };
        }
        let tasks = &tasks;
        let count = tasks.check().map_err(HostError::InvalidArgument)?;
        if !self.has_module(&template.module_sha256) {
            return Err(unknown_module(&template.module_sha256));
        }
        let stdin = template.stdin.len() as u64 * u64::from(count);
        if stdin > MAX_JOB_STDIN_BYTES {
            return Err(HostError::InvalidArgument(format!(
                "each of the job's {count} tasks would store its {}-byte stdin: {stdin} bytes \
                 in all, over the {MAX_JOB_STDIN_BYTES}-byte bound; give data that tasks share \
                 as a file",
                template.stdin.len()
            )));
        }
        self.check_could_run(&template)?;
        self.admit_for_tenant(
            &template.tenant,
            &template.resources(),
            template.limits.fuel,
            u64::from(count),
        )?;
        // Made one at a time, counting what they take: a job whose expansion would be huge
        // is refused once it passes the bound, before it holds more.
        let id = JobId(self.next_job_id + 1);
        let mut made: Vec<(TaskSpec, Vec<job::Param>)> = Vec::with_capacity(count as usize);
        let mut stored: u64 = 0;
        for index in 0..count {
            let params = tasks.params_of(index);
            let spec =
                match job::task_spec(&template, id, index, count, &params, bounds::ARGS_BYTES) {
                    Ok(spec) => spec,
                    Err(args) => {
                        return Err(HostError::InvalidArgument(format!(
                            "task {index} of the job would have over {args} bytes of args, over \
                         the bound ({})",
                            bounds::ARGS_BYTES
                        )))
                    }
                };
            let args: usize = spec.args.iter().map(String::len).sum();
            let env: usize = spec.env.iter().map(|(k, v)| k.len() + v.len()).sum();
            if args > bounds::ARGS_BYTES || env > bounds::ENV_BYTES {
                return Err(HostError::InvalidArgument(format!(
                    "task {index} of the job would have {args} bytes of args and {env} of \
                     env, over the bounds ({} each)",
                    bounds::ARGS_BYTES
                )));
            }
            stored += spec.stored_bytes()
                + params
                    .iter()
                    .map(|(n, v)| (n.len() + v.len()) as u64)
                    .sum::<u64>();
            if stored > MAX_JOB_BYTES {
                return Err(HostError::InvalidArgument(format!(
                    "the job's tasks would take over {MAX_JOB_BYTES} bytes together (at task \
                     {index} of {count}): give data that tasks share as a file, or submit \
                     fewer tasks at once"
                )));
            }
            made.push((spec, params));
        }
        room(stored)?;
        self.next_job_id = id.0;
        let first = TaskId(self.next_id + 1);
        self.next_id += u64::from(count);
        let used = self
            .modules
            .get_mut(&template.module_sha256)
            .expect("checked above");
        used.tasks += u64::from(count);
        used.last_used_ms = used.last_used_ms.max(now.ms);
        self.inputs_mounted(&template.tenant, &template.inputs, u64::from(count), now);
        let job = Job {
            id,
            name: template.name.clone(),
            tenant: template.tenant.clone(),
            module_sha256: template.module_sha256.clone(),
            count,
            first,
            param_names: tasks.names(),
            max_failures,
            kill_requested: false,
            state: JobState::Running,
            reason: String::new(),
            created_at_ms: now.ms,
            finished_at_ms: 0,
            request_sha256: sha256,
        };
        fx.writes.push(Write::Job(job.clone()));
        if let Some((tenant, key)) = key {
            fx.writes
                .push(Write::JobKey(tenant.clone(), key.clone(), id));
            self.job_key_of.insert(id, (tenant.clone(), key.clone()));
            self.job_keys.insert((tenant, key), id);
        }
        for (index, (spec, params)) in (0..count).zip(made) {
            let task_id = job.task(index);
            let mut task = Task::new(task_id, spec, now.ms);
            task.job = Some(JobMember {
                job: id,
                index,
                params,
            });
            fx.writes.push(Write::Task(task.clone()));
            fx.events.push(Arc::new(public(&task)));
            self.queues.insert(&task.spec, task_id);
            self.tasks.insert(task_id, task);
        }
        let mut counts = [0; 7];
        counts[TaskState::Pending.index()] = count;
        let entry = JobEntry {
            job,
            counts,
            ended: 0,
            failures: 0,
            stopping: false,
            fuel_used: 0,
            kept: count,
        };
        let view = entry.view();
        self.jobs.insert(id, entry);
        self.dirty = true;
        Ok(SubmittedJob {
            view,
            stored_bytes: stored,
            existed: false,
        })
    }

    /// A job, for `tenant` (`None`: any): another tenant's is answered as one that does not
    /// exist.
    pub fn job(&self, id: JobId, tenant: Option<&str>) -> Result<JobView, HostError> {
        self.job_entry(id, tenant).map(JobEntry::view)
    }

    pub(super) fn job_entry(
        &self,
        id: JobId,
        tenant: Option<&str>,
    ) -> Result<&JobEntry, HostError> {
        match self.jobs.get(&id) {
            Some(entry) if tenant.is_none_or(|t| t == entry.job.tenant) => Ok(entry),
            _ if id.0 <= self.next_job_id => Err(HostError::NotFound(format!(
                "no job {id}: it does not exist, or ended more than the host's task_retention \
                 ago and was removed"
            ))),
            _ => Err(unknown_job(id)),
        }
    }

    /// Jobs after `after` (exclusive) in id order, of `tenant` (`None`: every tenant), at most
    /// `limit`; and whether more remain.
    pub fn list_jobs(
        &self,
        tenant: Option<&str>,
        after: Option<JobId>,
        limit: usize,
    ) -> (Vec<JobView>, bool) {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let mut out = Vec::new();
        for entry in self.jobs.range(JobId(start)..).map(|(_, e)| e) {
            if tenant.is_some_and(|t| t != entry.job.tenant) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(entry.view());
        }
        (out, false)
    }

    /// A job's tasks in index order after `after` (exclusive), at most `limit`, without
    /// stdin (those removed are left out); and whether more remain.
    pub fn job_tasks(
        &self,
        id: JobId,
        tenant: Option<&str>,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<(Vec<Task>, bool), HostError> {
        let job = &self.job_entry(id, tenant)?.job;
        let end = job.first.0 + u64::from(job.count);
        let start = after.map_or(job.first.0, |a| a.0.saturating_add(1).max(job.first.0));
        if start >= end {
            return Ok((Vec::new(), false));
        }
        let mut page: Vec<Task> = Vec::new();
        for task in self.tasks.range(TaskId(start)..TaskId(end)).map(|(_, t)| t) {
            if page.len() == limit {
                return Ok((page, true));
            }
            page.push(public(task));
        }
        Ok((page, false))
    }

    /// Kills every task of the job that has not ended (see [`HostState::kill`]); the job ends
    /// KILLED once they all have.
    pub fn kill_job(
        &mut self,
        id: JobId,
        tenant: Option<&str>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<JobView, HostError> {
        let entry = self.job_entry(id, tenant)?;
        if entry.job.state != JobState::Running {
            return Err(HostError::FailedPrecondition(format!(
                "job {id} already ended ({})",
                entry.job.state.as_str()
            )));
        }
        let entry = self.jobs.get_mut(&id).expect("looked up above");
        // A job failing fast has failed already: its rest are being killed, and it ends
        // FAILED.
        if !entry.stopping {
            entry.job.kill_requested = true;
            entry.job.reason = "killed on request".into();
            fx.writes.push(Write::Job(entry.job.clone()));
        }
        let job = entry.job.clone();
        self.kill_unended(&job, None, now, fx);
        // Kept while its tasks are, though it may have ended with this change.
        self.job(id, None)
    }

    /// Kills the job's tasks that have not ended.
    fn kill_unended(&mut self, job: &Job, why: Option<&str>, now: Now, fx: &mut Effects) {
        for task_id in job.tasks() {
            let unended = self
                .tasks
                .get(&task_id)
                .is_some_and(|t| !t.state.is_terminal());
            if unended {
                let _ = self.kill_for(task_id, why, now, fx);
            }
        }
    }

    /// A task of job `id` ended for good (`task` as it ended): counted, then the job settled.
    pub(super) fn job_task_ended(&mut self, id: JobId, task: &Task, now: Now, fx: &mut Effects) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        entry.ended += 1;
        entry.fuel_used = entry.fuel_used.saturating_add(task.fuel_used);
        if matches!(task.state, TaskState::Failed | TaskState::Lost) {
            entry.failures += 1;
        }
        self.settle_job(id, now, fx);
    }

    /// Acts on what a running job's counts say: past `max_failures` failures, the rest are
    /// killed (once); once every task has ended, the job ends. Ending a task here may settle
    /// the job again, from within: it is left as that leaves it.
    fn settle_job(&mut self, id: JobId, now: Now, fx: &mut Effects) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        if entry.job.state != JobState::Running {
            return;
        }
        let max = entry.job.max_failures;
        if max > 0 && entry.failures >= max && !entry.stopping && !entry.job.kill_requested {
            entry.stopping = true;
            entry.job.reason = format!(
                "{} of its tasks failed, its max_failures: the rest were killed",
                entry.failures
            );
            fx.writes.push(Write::Job(entry.job.clone()));
            let job = entry.job.clone();
            let why = format!("job {id} reached its max_failures ({max})");
            self.kill_unended(&job, Some(&why), now, fx);
        }
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        if entry.ended < entry.job.count || entry.job.state != JobState::Running {
            return;
        }
        let finished = entry.counts[TaskState::Finished.index()];
        entry.job.state = if entry.job.kill_requested {
            JobState::Killed
        } else if finished == entry.job.count && !entry.stopping {
            JobState::Finished
        } else {
            JobState::Failed
        };
        if entry.job.state == JobState::Failed && entry.job.reason.is_empty() {
            let shown: Vec<String> = [TaskState::Failed, TaskState::Lost, TaskState::Killed]
                .into_iter()
                .filter(|s| entry.counts[s.index()] > 0)
                .map(|s| format!("{} {}", entry.counts[s.index()], s.as_str().to_lowercase()))
                .collect();
            let missing = entry.job.count.saturating_sub(entry.kept);
            let missing = match missing {
                0 => String::new(),
                n => format!(", {n} not restored"),
            };
            entry.job.reason = format!(
                "{} of {} tasks did not finish: {}{missing}",
                entry.job.count - finished,
                entry.job.count,
                shown.join(", ")
            );
        }
        entry.job.finished_at_ms = now.ms;
        fx.writes.push(Write::Job(entry.job.clone()));
        // Its tasks are kept from now for the retention, together.
        for task_id in entry.job.tasks() {
            if self.tasks.contains_key(&task_id) {
                self.ended.insert((now.ms, task_id));
            }
        }
    }

    /// Settles the jobs restored running (see [`HostState::finish_restoring_jobs`]).
    pub(super) fn settle_restored_jobs(&mut self, now: Now, fx: &mut Effects) {
        for id in std::mem::take(&mut self.unsettled_jobs) {
            self.settle_job(id, now, fx);
        }
    }

    /// Removes the jobs found without tasks when the store was opened, and, once they have
    /// been kept a `task_retention` from then, keys naming jobs not restored (records set
    /// aside), as a task's key is: a retry with one meanwhile is refused, not a second job.
    pub(super) fn collect_orphan_jobs(&mut self, now: Now, fx: &mut Effects) {
        for id in std::mem::take(&mut self.orphan_jobs) {
            self.forget_job(id, fx);
        }
        let cutoff = now.ms.saturating_sub(self.rules.task_retention_ms);
        while let Some(&(since, id)) = self.orphan_job_keys.first() {
            if since > cutoff {
                break;
            }
            self.orphan_job_keys.remove(0);
            self.forget_job(id, fx);
        }
    }

    /// Removes a job and its idempotency key.
    fn forget_job(&mut self, id: JobId, fx: &mut Effects) {
        if self.jobs.remove(&id).is_some() {
            fx.writes.push(Write::ForgetJob(id));
        }
        if let Some(key) = self.job_key_of.remove(&id) {
            self.job_keys.remove(&key);
            fx.writes.push(Write::ForgetJobKey(key.0, key.1));
        }
    }

    /// Whether idempotency key `key` of `tenant` names a job.
    pub fn names_job(&self, tenant: &str, key: &str) -> bool {
        self.job_keys
            .contains_key(&(tenant.to_string(), key.to_string()))
    }

    /// A task past its retention was removed: its job goes with the last of its tasks.
    pub(super) fn job_task_removed(&mut self, task: &Task, fx: &mut Effects) {
        let Some(member) = &task.job else { return };
        let Some(entry) = self.jobs.get_mut(&member.job) else {
            return;
        };
        entry.kept = entry.kept.saturating_sub(1);
        if entry.kept == 0 {
            self.forget_job(member.job, fx);
        }
    }

    /// The jobs a store held, and their idempotency keys, before their tasks are restored, at
    /// `now`.
    pub(super) fn restore_jobs(
        &mut self,
        jobs: Vec<Job>,
        keys: Vec<((String, String), JobId)>,
        now: Now,
    ) {
        let restored: std::collections::HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        for (key, id) in keys {
            if !restored.contains(&id) {
                self.orphan_job_keys.push((now.ms, id));
            }
            self.job_key_of.insert(id, key.clone());
            self.job_keys.insert(key, id);
        }
        for job in jobs {
            let entry = JobEntry {
                job,
                counts: [0; 7],
                ended: 0,
                failures: 0,
                stopping: false,
                fuel_used: 0,
                kept: 0,
            };
            self.jobs.insert(entry.job.id, entry);
        }
    }

    /// Counts a restored task in its job. Answers, for a task of a job, when its job ended (0
    /// while it runs), from which its retention counts; `None` for a task of no job, or of a
    /// job that was not restored (its record set aside as undecodable), kept on its own.
    pub(super) fn restore_job_task(&mut self, task: &Task) -> Option<i64> {
        let entry = task.job.as_ref().and_then(|m| self.jobs.get_mut(&m.job))?;
        entry.counts[task.state.index()] += 1;
        entry.kept += 1;
        // A final state is stored only for good (a retried attempt is stored PENDING).
        if task.state.is_terminal() {
            entry.ended += 1;
            entry.fuel_used = entry.fuel_used.saturating_add(task.fuel_used);
            if matches!(task.state, TaskState::Failed | TaskState::Lost) {
                entry.failures += 1;
            }
        }
        Some(match entry.job.state {
            JobState::Running => 0,
            _ => entry.job.finished_at_ms,
        })
    }

    /// Once every task is restored: a job's tasks missing from the store (set aside as
    /// undecodable) count as ended and failed, so that it can end. A job none of whose tasks
    /// is left is removed at the next collection; a running one is settled then (it may have
    /// ended, or passed its max_failures, with what was restored).
    pub(super) fn finish_restoring_jobs(&mut self) {
        for entry in self.jobs.values_mut() {
            if entry.kept == 0 {
                self.orphan_jobs.push(entry.job.id);
                continue;
            }
            let missing = entry.job.count.saturating_sub(entry.kept);
            entry.ended += missing;
            entry.failures += missing;
            // A stored reason says it failed fast before.
            let max = entry.job.max_failures;
            entry.stopping = max > 0 && entry.failures >= max && !entry.job.reason.is_empty();
            if entry.job.state == JobState::Running {
                self.unsettled_jobs.push(entry.job.id);
            }
        }
    }
}
