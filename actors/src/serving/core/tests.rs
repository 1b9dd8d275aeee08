//! The serving core, event in, exact effects out.

use std::time::{Duration, Instant};

use super::*;
use crate::shard::{Assignment, ShardMap};
use crate::state::Handoff;

const ME: NodeId = NodeId(1);
const OTHER: NodeId = NodeId(2);

fn state(owners: &[(u32, Option<NodeId>, u64)]) -> ClusterState {
    let mut st = ClusterState { shard_map: std::sync::Arc::new(ShardMap::new(4, 1)), ..ClusterState::default() };
    for (s, o, e) in owners {
        st.map_mut().assign(ShardId(*s), &Assignment { owner: *o, replicas: vec![] }, Epoch(*e));
    }
    st
}

fn observe(core: &mut Core, until: Option<Instant>, st: &ClusterState, now: Instant) -> Vec<Effect> {
    core.handle(Input::Observe { lease_until: until, state: st, now })
}

fn activated(core: &mut Core, results: Vec<(ShardId, Epoch, bool)>, st: &ClusterState) -> Vec<Effect> {
    core.handle(Input::Activated { results, state: st })
}

fn assigned(shard: u32, epoch: u64, previous_owner: Option<NodeId>) -> ShardChange {
    ShardChange::Assigned { shard: ShardId(shard), epoch: Epoch(epoch), previous_owner, was_replica: false }
}

#[test]
fn an_owned_shard_runs_its_hook_then_activates() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let st = state(&[(0, Some(ME), 5), (1, Some(OTHER), 6)]);
    assert_eq!(
        observe(&mut core, lease, &st, t0),
        vec![Effect::Hooks(vec![assigned(0, 5, None)]), Effect::Activate(vec![(ShardId(0), Epoch(5))])]
    );
    assert_eq!(activated(&mut core, vec![(ShardId(0), Epoch(5), true)], &st), vec![]);
    assert_eq!(core.active().get(&ShardId(0)), Some(&Epoch(5)));
    // Nothing changed: nothing to do.
    assert_eq!(observe(&mut core, lease, &st, t0), vec![Effect::Activate(vec![])]);
}

#[test]
fn no_lease_no_activation() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let st = state(&[(0, Some(ME), 5)]);
    assert_eq!(observe(&mut core, None, &st, t0), vec![Effect::Activate(vec![])]);
    let expired = Some(t0);
    assert_eq!(observe(&mut core, expired, &st, t0), vec![Effect::Activate(vec![])], "a lease ending now is over");
}

fn serving(core: &mut Core, st: &ClusterState, lease: Option<Instant>, now: Instant) {
    let effects = observe(core, lease, st, now);
    let Some(Effect::Activate(starts)) = effects.last() else { panic!("{effects:?}") };
    let results = starts.iter().map(|(s, e)| (*s, *e, true)).collect();
    activated(core, results, st);
}

#[test]
fn a_planned_move_stops_entities_before_its_hook_and_confirms_last() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let mut st = state(&[(0, Some(ME), 5)]);
    serving(&mut core, &st, lease, t0);
    // BeginHandoff at index 9: the shard has no owner until this node confirms.
    st.map_mut().assign(ShardId(0), &Assignment { owner: None, replicas: vec![] }, Epoch(9));
    st.handoffs.insert(ShardId(0), Handoff { from: ME, to: Assignment { owner: Some(OTHER), replicas: vec![] } });
    assert_eq!(
        observe(&mut core, lease, &st, t0),
        vec![
            Effect::Deactivate { shards: vec![ShardId(0)], ran_out: None },
            Effect::StopEntities(vec![ShardId(0)]),
            Effect::Hooks(vec![ShardChange::Unassigned {
                shard: ShardId(0),
                epoch: Epoch(5),
                new_owner: Some(OTHER),
                stays_replica: false,
                still_assigned: false,
            }]),
            Effect::ConfirmReleased(vec![(ShardId(0), Epoch(9))]),
            Effect::Activate(vec![]),
        ]
    );
    activated(&mut core, vec![], &st);
    assert_eq!(observe(&mut core, lease, &st, t0), vec![Effect::Activate(vec![])], "confirmed once");
    // The proposal failed: the next observation confirms again.
    assert_eq!(core.handle(Input::ConfirmFailed(vec![(ShardId(0), Epoch(9))])), vec![]);
    assert_eq!(
        observe(&mut core, lease, &st, t0),
        vec![Effect::ConfirmReleased(vec![(ShardId(0), Epoch(9))]), Effect::Activate(vec![])]
    );
}

/// A handoff to this shard's follower that keeps this node as the follower: the node hears it
/// stays a replica (`ShardLeadershipLost` before `ShardUnassigned`), though the map in flight
/// lists neither as a follower yet.
#[test]
fn a_handoff_that_keeps_this_node_a_follower_says_so() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let mut st = state(&[]);
    st.map_mut().assign(ShardId(0), &Assignment { owner: Some(ME), replicas: vec![OTHER] }, Epoch(5));
    serving(&mut core, &st, lease, t0);
    st.map_mut().assign(ShardId(0), &Assignment { owner: None, replicas: vec![OTHER] }, Epoch(9));
    st.handoffs.insert(ShardId(0), Handoff { from: ME, to: Assignment { owner: Some(OTHER), replicas: vec![ME] } });
    let effects = observe(&mut core, lease, &st, t0);
    let hooks: Vec<&ShardChange> =
        effects.iter().filter_map(|e| if let Effect::Hooks(h) = e { Some(h) } else { None }).flatten().collect();
    assert_eq!(
        hooks,
        vec![&ShardChange::Unassigned {
            shard: ShardId(0),
            epoch: Epoch(5),
            new_owner: Some(OTHER),
            stays_replica: true,
            still_assigned: false,
        }],
        "{effects:?}"
    );
}

#[test]
fn a_lease_lapse_keeps_entities_and_a_later_move_stops_them_before_the_confirmation() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let until = t0 + Duration::from_millis(500);
    let mut st = state(&[(0, Some(ME), 5)]);
    serving(&mut core, &st, Some(until), t0);
    let later = until + Duration::from_millis(30);
    assert_eq!(
        observe(&mut core, None, &st, later),
        vec![
            Effect::Deactivate { shards: vec![ShardId(0)], ran_out: Some(until) },
            Effect::Hooks(vec![ShardChange::Unassigned {
                shard: ShardId(0),
                epoch: Epoch(5),
                new_owner: None,
                stays_replica: false,
                still_assigned: true,
            }]),
            Effect::Activate(vec![]),
        ],
        "only the lease ran out: the entities stay (paused)"
    );
    activated(&mut core, vec![], &st);
    assert_eq!(core.paused().get(&ShardId(0)), Some(&Epoch(5)));
    // The leader hands the shard off meanwhile: the kept entities stop before the confirmation.
    st.map_mut().assign(ShardId(0), &Assignment { owner: None, replicas: vec![] }, Epoch(9));
    st.handoffs.insert(ShardId(0), Handoff { from: ME, to: Assignment { owner: Some(OTHER), replicas: vec![] } });
    assert_eq!(
        observe(&mut core, None, &st, later),
        vec![
            Effect::StopEntities(vec![ShardId(0)]),
            Effect::ConfirmReleased(vec![(ShardId(0), Epoch(9))]),
            Effect::Activate(vec![])
        ]
    );
}

#[test]
fn the_same_epoch_again_keeps_paused_entities_another_epoch_stops_them_first() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let until = t0 + Duration::from_millis(500);
    let mut st = state(&[(0, Some(ME), 5), (1, Some(ME), 5)]);
    serving(&mut core, &st, Some(until), t0);
    let later = until + Duration::from_millis(1);
    observe(&mut core, None, &st, later);
    activated(&mut core, vec![], &st);
    // Shard 1 comes back to this node at a new epoch (moved away and back while it was cut off).
    st.map_mut().assign(ShardId(1), &Assignment { owner: Some(OTHER), replicas: vec![] }, Epoch(7));
    st.map_mut().assign(ShardId(1), &Assignment { owner: Some(ME), replicas: vec![] }, Epoch(8));
    let lease = Some(later + Duration::from_millis(500));
    assert_eq!(
        observe(&mut core, lease, &st, later),
        vec![
            Effect::StopEntities(vec![ShardId(1)]),
            Effect::Hooks(vec![assigned(0, 5, None), assigned(1, 8, None)]),
            Effect::Activate(vec![(ShardId(0), Epoch(5)), (ShardId(1), Epoch(8))]),
        ]
    );
}

#[test]
fn an_activation_the_table_refused_is_reported_unassigned() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let st = state(&[(0, Some(ME), 5)]);
    observe(&mut core, lease, &st, t0);
    let newer = state(&[(0, Some(OTHER), 6)]);
    assert_eq!(
        activated(&mut core, vec![(ShardId(0), Epoch(5), false)], &newer),
        vec![Effect::Hooks(vec![ShardChange::Unassigned {
            shard: ShardId(0),
            epoch: Epoch(5),
            new_owner: Some(OTHER),
            stays_replica: false,
            still_assigned: false,
        }])]
    );
    assert!(core.active().is_empty());
}

#[test]
fn follower_roles_come_last_and_a_removed_follower_stops_its_replica_instances() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let mut st = ClusterState { shard_map: std::sync::Arc::new(ShardMap::new(2, 2)), ..ClusterState::default() };
    st.map_mut().assign(ShardId(0), &Assignment { owner: Some(OTHER), replicas: vec![ME] }, Epoch(3));
    assert_eq!(observe(&mut core, lease, &st, t0), vec![Effect::Activate(vec![])]);
    assert_eq!(
        activated(&mut core, vec![], &st),
        vec![Effect::Hooks(vec![ShardChange::ReplicaAdded {
            shard: ShardId(0),
            epoch: Epoch(3),
            leader: Some(OTHER)
        }])]
    );
    st.map_mut().assign(ShardId(0), &Assignment { owner: Some(OTHER), replicas: vec![NodeId(3)] }, Epoch(4));
    observe(&mut core, lease, &st, t0);
    assert_eq!(
        activated(&mut core, vec![], &st),
        vec![
            Effect::StopEntities(vec![ShardId(0)]),
            Effect::Hooks(vec![ShardChange::ReplicaRemoved { shard: ShardId(0), epoch: Epoch(3) }])
        ]
    );
}

#[test]
fn a_promoted_follower_keeps_its_replica_instances() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let lease = Some(t0 + Duration::from_millis(500));
    let mut st = ClusterState { shard_map: std::sync::Arc::new(ShardMap::new(2, 2)), ..ClusterState::default() };
    st.map_mut().assign(ShardId(0), &Assignment { owner: Some(OTHER), replicas: vec![ME] }, Epoch(3));
    serving(&mut core, &st, lease, t0);
    st.map_mut().assign(ShardId(0), &Assignment { owner: Some(ME), replicas: vec![] }, Epoch(4));
    assert_eq!(
        observe(&mut core, lease, &st, t0),
        vec![
            Effect::Hooks(vec![ShardChange::Assigned {
                shard: ShardId(0),
                epoch: Epoch(4),
                previous_owner: Some(OTHER),
                was_replica: true
            }]),
            Effect::Activate(vec![(ShardId(0), Epoch(4))]),
        ]
    );
    assert_eq!(activated(&mut core, vec![(ShardId(0), Epoch(4), true)], &st), vec![], "no ReplicaRemoved, no stop");
}

#[test]
fn shutdown_stops_serving_everything() {
    let (t0, mut core) = (Instant::now(), Core::new(ME));
    let st = state(&[(0, Some(ME), 5), (2, Some(ME), 5)]);
    serving(&mut core, &st, Some(t0 + Duration::from_secs(1)), t0);
    assert_eq!(core.shutdown(), vec![Effect::Deactivate { shards: vec![ShardId(0), ShardId(2)], ran_out: None }]);
}
