"""The TVM CPU target. Importing it sets TVM's thread-pool variables the user has not set
(``threads.configure_environment``) before any TVM code can start the pool."""

from rqcompile.targets.tvm.threads import configure_environment

configure_environment()
