//! The IPVS dataplane: IPVS services and destinations driven over generic netlink.
