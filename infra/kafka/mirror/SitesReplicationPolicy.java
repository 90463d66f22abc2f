package dev.user.mirror;

import org.apache.kafka.connect.mirror.IdentityReplicationPolicy;

/**
 * MirrorMaker 2's IdentityReplicationPolicy with its own heartbeats topic renamed.
 *
 * USER keeps topic names across the edge-cloud mirror (each site owns disjoint partitions
 * of every site-partitioned topic, so the sites' copies merge into one cloud topic). MM2
 * reserves the topic name "heartbeats" (and, under the identity policy, every name ending
 * in it) for its own heartbeats and would rename USER's robot heartbeats to
 * "site.heartbeats"; this policy moves MM2's reserved name to "mm2-heartbeats" instead.
 * That is the whole class: built by infra/mirror.py with javac into mirror-libs.
 */
public class SitesReplicationPolicy extends IdentityReplicationPolicy {
    public static final String HEARTBEATS = "mm2-heartbeats";

    @Override
    public String heartbeatsTopic() {
        return HEARTBEATS;
    }
}
