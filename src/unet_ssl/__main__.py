from unet_ssl.cli import main

main()
