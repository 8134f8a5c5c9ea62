"""Routes that speak other sandboxes' APIs over the one engine: SandboxFusion, E2B's code
interpreter, LibreChat's code API. The formats live in sandbox.compat; these are the thin routes.

| peer         | routes                                   | auth                                           |
|--------------|------------------------------------------|------------------------------------------------|
| SandboxFusion| POST /run_code                           | bearer; or the key in the path: /k/KEY/run_code |
| E2B          | POST /e2b/execute, /e2b/contexts[...]    | bearer; or the key in the path: /k/KEY/e2b/...  |
| LibreChat    | /librechat/exec, upload, download, files | X-API-Key (LibreChat's header) or bearer        |
"""

from fastapi import APIRouter

from . import e2b, librechat, sandboxfusion

ROUTERS: list[APIRouter] = [sandboxfusion.router, sandboxfusion.path_router, e2b.router, e2b.path_router,
                            librechat.router]
