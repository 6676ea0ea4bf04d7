"""`gpufabric sandbox`: the real operator over a simulated mixed-vendor RoCE fabric, on one machine.

What is simulated lives here and only here: the API server (`emulator`, kmock's emulator made strict), the
kubelets and the serving engines. The operator inside is `gpufabric.controller`, unchanged. Needs the
`sandbox` extra (kmock, rich); the operator's image does not install it, and import-linter's layers keep the
operator from importing this package.
"""
