"""The qnf CNI plugin: a stateless shim between a container runtime and the node's vnet agent."""
