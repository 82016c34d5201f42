"""The adapter recipes `mixlora demo` trains and `mixlora train --config` reads.

Shipped as package data (`mlx_mixlora.recipes`); read through
`mlx_mixlora.train.recipe`.
"""
